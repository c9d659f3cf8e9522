# moto's own server, with one change to its DynamoDB: a TransactWriteItems keeps, for its
# rollback, a copy of the items it touches instead of a copy of every table it touches.
#
# Why: moto 5 deep-copies each table a transaction names before applying it, so a claim
# transaction costs O(items in the table): a batch run's table of claims and records grows by
# 11 items per execution and, after ~1,500 executions, one transaction takes longer than the
# function's 2 s call bound. Semantics are moto's own: its transact_write_items runs unchanged
# (conditions, ALL_OLD, cancellation reasons, the one-operation-per-item check); only the backup
# it restores on a cancellation is made of the touched items (and each table's stream length).
#
# Arguments: host, port, "threaded" or "single" (one request at a time: moto's SQS is not
# thread-safe, and its interpreter lock lets one thread run at a time anyway).
import copy
import os
import sys


def _patch_transactions():
    import moto.dynamodb.models as dynamodb_models
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    class TablesLeftInPlace:
        """The `copy` module as moto's DynamoDB backend sees it: deepcopy(Table) is the table."""

        def __getattr__(self, name):
            return getattr(copy, name)

        @staticmethod
        def deepcopy(value, memo=None):
            return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    def restorer(backend, operation):
        """A function that puts back the item `operation` touches as it is now (None: unkeyed)."""
        try:
            table = backend.get_table(operation["TableName"])
            attributes = operation["Item"] if "Item" in operation else operation["Key"]
            hash_key = DynamoType(attributes[table.hash_key_attr])
            range_key = DynamoType(attributes[table.range_key_attr]) if table.range_key_attr else None
        except Exception:  # moto's own checks fail this operation before it changes anything
            return None
        saved = copy.deepcopy(table.get_item(hash_key, range_key))
        stream = table.stream_shard
        stream_length = len(stream.items) if stream is not None else 0

        def restore():
            holder = table.items[hash_key] if range_key is not None else table.items
            slot = range_key if range_key is not None else hash_key
            if saved is None:
                holder.pop(slot, None)
            else:
                holder[slot] = saved
            if stream is not None:
                del stream.items[stream_length:]

        return restore

    moto_transact_write_items = DynamoDBBackend.transact_write_items

    def transact_write_items(self, transact_items):
        restorers = [restorer(self, op) for item in transact_items for op in item.values()]
        try:
            return moto_transact_write_items(self, transact_items)
        except Exception:
            for restore in reversed(restorers):
                if restore is not None:
                    restore()
            raise

    dynamodb_models.copy = TablesLeftInPlace()
    DynamoDBBackend.transact_write_items = transact_write_items


try:
    _patch_transactions()
    print("moto_launcher: TransactWriteItems backs up only the items it touches", file=sys.stderr)
except (ImportError, AttributeError) as e:  # moto's internals moved: serve it as it is
    print(f"moto_launcher: DynamoDB transactions left as moto has them ({e!r})", file=sys.stderr)

if __name__ == "__main__":
    host, port, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    os.environ.setdefault("MOTO_PORT", port)
    if mode == "threaded":
        from moto.server import main

        main(["-H", host, "-p", port])
    else:
        from werkzeug.serving import run_simple
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

        app = DomainDispatcherApplication(create_backend_app)
        run_simple(host, int(port), app, threaded=False, request_handler=MotoRequestHandler)
