//! What a message costs on AWS: the prices (one place for each), DynamoDB's item sizes and
//! request units, Step Functions' state transitions read from a state machine's definition,
//! and the bill per million messages. Pure functions, unit-tested without a network.
//!
//! Units are in the names: dollars (`usd`), bytes, seconds, GB-seconds. A "GB" of storage is
//! 2³⁰ bytes and a month is 730 hours, as AWS bills them.

use serde_json::Value;

/// Prices in us-east-1 (on-demand, no free tier, no savings plan), in dollars per unit.
pub mod price {
    /// Step Functions Standard: $0.025 per 1,000 state transitions.
    pub const SFN_TRANSITION_USD: f64 = 0.025 / 1_000.0;
    /// Step Functions Express: $1.00 per million requests (executions started).
    pub const SFN_EXPRESS_REQUEST_USD: f64 = 1.00 / 1e6;
    /// Step Functions Express: $0.00001667 per GB-second (the first 1,000 GB-hours a month;
    /// billed in 64 MB steps of memory and 100 ms steps of duration).
    pub const SFN_EXPRESS_GB_SECOND_USD: f64 = 0.000_016_67;
    /// DynamoDB on-demand, Standard table class: $0.625 per million write request units.
    pub const DYNAMODB_WRU_USD: f64 = 0.625 / 1e6;
    /// DynamoDB on-demand, Standard table class: $0.125 per million read request units.
    pub const DYNAMODB_RRU_USD: f64 = 0.125 / 1e6;
    /// DynamoDB storage, Standard table class: $0.25 per GB-month (beyond the free 25 GB).
    pub const DYNAMODB_GB_MONTH_USD: f64 = 0.25;
    /// Lambda: $0.20 per million requests.
    pub const LAMBDA_REQUEST_USD: f64 = 0.20 / 1e6;
    /// Lambda on arm64 (the template's default architecture): $0.0000133334 per GB-second.
    pub const LAMBDA_ARM64_GB_SECOND_USD: f64 = 0.000_013_333_4;
}

/// The template's default MemorySize, MB (`template.yaml`).
pub const LAMBDA_MEMORY_MB: f64 = 256.0;
/// How long claims and execution records were kept until issue 18: 91 days, seconds (now
/// `Config::claim_ttl`, from the queues' retention: the bench's runs use the template's).
pub const ISSUE_12_RETENTION_SECONDS: f64 = 91.0 * 86_400.0;
/// A billing month: 730 hours, in seconds.
pub const MONTH_SECONDS: f64 = 730.0 * 3_600.0;
/// A GB of storage, bytes.
pub const GB_BYTES: f64 = 1_073_741_824.0;
/// DynamoDB's storage overhead per item (indexing), bytes.
pub const ITEM_OVERHEAD_BYTES: usize = 100;
/// An SQS message id: a UUID, 36 characters.
pub const SQS_MESSAGE_ID_CHARS: usize = 36;

/// DynamoDB's size of a String attribute: its name's bytes plus its value's (UTF-8).
pub fn string_bytes(name: &str, value_bytes: usize) -> usize {
    name.len() + value_bytes
}

/// DynamoDB's size of a Number attribute: its name's bytes, 1 byte per two significant digits
/// (leading and trailing zeros trimmed), plus 1.
pub fn number_bytes(name: &str, value: u64) -> usize {
    let digits = value.to_string();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len().max(1);
    name.len() + significant.div_ceil(2) + 1
}

/// Write request units of writing an item of `bytes`: one per KB (started), at least one;
/// twice that inside a transaction.
pub fn write_units(bytes: usize, transactional: bool) -> u64 {
    let units = bytes.div_ceil(1024).max(1) as u64;
    if transactional {
        2 * units
    } else {
        units
    }
}

/// Read request units of a strongly consistent read of an item of `bytes`: one per 4 KB
/// (started), at least one.
pub fn read_units(bytes: usize) -> u64 {
    bytes.div_ceil(4096).max(1) as u64
}

/// The lengths that size one claim transaction's items (as `sfn_pacer::aws::dynamo` writes them):
/// a claim `pk` `claim#<scope>#<key>`, `kind` `claim`, `execution`, `expires_at`; the record
/// `pk` `execution#<scope>#<name>`, `kind` `execution`, `input`, `messages`, `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The claims' scope (the state machine's name), bytes.
    pub scope_bytes: usize,
    /// The execution's name, bytes.
    pub name_bytes: usize,
    /// Each member's key, bytes.
    pub key_bytes: Vec<usize>,
    /// The execution's input, bytes.
    pub input_bytes: usize,
    /// `expires_at`, seconds since the epoch.
    pub expires_at_epoch_s: u64,
}

impl Transaction {
    /// The size of the claim of a key of `key_bytes`.
    pub fn claim_bytes(&self, key_bytes: usize) -> usize {
        let pk = "claim#".len() + self.scope_bytes + 1 + key_bytes;
        string_bytes("pk", pk)
            + string_bytes("kind", "claim".len())
            + string_bytes("execution", self.name_bytes)
            + number_bytes("expires_at", self.expires_at_epoch_s)
    }

    /// The size of the execution's record.
    pub fn record_bytes(&self) -> usize {
        let pk = "execution#".len() + self.scope_bytes + 1 + self.name_bytes;
        string_bytes("pk", pk)
            + string_bytes("kind", "execution".len())
            + string_bytes("input", self.input_bytes)
            + number_bytes("messages", self.key_bytes.len() as u64)
            + number_bytes("expires_at", self.expires_at_epoch_s)
    }

    /// The size of the record once its execution's start is confirmed: `pk`, `kind`, `state`
    /// `started`, `expires_at` (`ClaimStore::confirm`).
    pub fn trimmed_record_bytes(&self) -> usize {
        let pk = "execution#".len() + self.scope_bytes + 1 + self.name_bytes;
        string_bytes("pk", pk)
            + string_bytes("kind", "execution".len())
            + string_bytes("state", "started".len())
            + number_bytes("expires_at", self.expires_at_epoch_s)
    }

    /// The write request units of the confirmation's UpdateItem: the larger of the record's
    /// sizes before and after, as DynamoDB bills an update.
    pub fn confirm_write_units(&self) -> u64 {
        write_units(self.record_bytes().max(self.trimmed_record_bytes()), false)
    }

    /// The write request units of the transaction: every claim and the record, transactional.
    pub fn write_units(&self) -> u64 {
        let claims: u64 = self
            .key_bytes
            .iter()
            .map(|k| write_units(self.claim_bytes(*k), true))
            .sum();
        claims + write_units(self.record_bytes(), true)
    }

    /// Bytes the transaction leaves in the table, DynamoDB's per-item overhead included.
    pub fn stored_bytes(&self) -> usize {
        let claims: usize = self.key_bytes.iter().map(|k| self.claim_bytes(*k)).sum();
        claims + self.record_bytes() + (self.key_bytes.len() + 1) * ITEM_OVERHEAD_BYTES
    }

    /// The same transaction with every key (a message id, which the input's items also
    /// carry as `messageId`) as long as an SQS message id: what it weighs on AWS.
    pub fn with_sqs_message_ids(&self) -> Transaction {
        let grow: usize = self
            .key_bytes
            .iter()
            .map(|k| SQS_MESSAGE_ID_CHARS.saturating_sub(*k))
            .sum();
        Transaction {
            key_bytes: self.key_bytes.iter().map(|k| (*k).max(SQS_MESSAGE_ID_CHARS)).collect(),
            input_bytes: self.input_bytes + grow,
            ..self.clone()
        }
    }
}

/// State transitions of one execution of the state machine `definition` (Amazon States
/// Language) whose Map states iterate over `items` items each: one per state entered, following
/// `StartAt` and `Next` to the end; an inline Map state is one, plus its item processor's
/// transitions for each item. `None` for a definition this cannot follow (Choice, Parallel, a
/// missing state, a loop). Assumes, as AWS's pricing page says, "a state transition each time a
/// step of your workflow is executed", and nothing for the execution's start or end.
pub fn transitions(definition: &Value, items: u64) -> Option<u64> {
    let states = definition.get("States")?.as_object()?;
    let mut name = definition.get("StartAt")?.as_str()?;
    let mut count = 0u64;
    for _ in 0..=states.len() {
        let state = states.get(name)?;
        count += match state.get("Type")?.as_str()? {
            "Pass" | "Task" | "Wait" | "Succeed" | "Fail" => 1,
            "Map" => {
                let processor = state.get("ItemProcessor").or_else(|| state.get("Iterator"))?;
                1 + items * transitions(processor, items)?
            }
            _ => return None,
        };
        if state.get("End").and_then(Value::as_bool) == Some(true)
            || matches!(state.get("Type")?.as_str()?, "Succeed" | "Fail")
        {
            return Some(count);
        }
        name = state.get("Next")?.as_str()?;
    }
    None
}

/// What one message uses, on average.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// Executions started (Step Functions requests).
    pub executions: f64,
    /// State transitions (Standard).
    pub transitions: f64,
    /// DynamoDB write request units.
    pub write_units: f64,
    /// DynamoDB read request units.
    pub read_units: f64,
    /// Lambda requests (invocations).
    pub lambda_requests: f64,
    /// Lambda duration, GB-seconds (billed duration × memory).
    pub lambda_gb_seconds: f64,
    /// Bytes kept in the table for `retention_seconds`.
    pub stored_bytes: f64,
    /// How long claims and records are kept, seconds.
    pub retention_seconds: f64,
}

/// One line of a bill per million messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// What is billed.
    pub item: &'static str,
    /// The billed quantity per million messages, in `unit`.
    pub quantity: f64,
    /// Its unit.
    pub unit: &'static str,
    /// Dollars per million messages.
    pub usd: f64,
}

/// GB-months of storage that one message's `stored_bytes`, kept `retention_seconds`, bills.
pub fn gb_months(stored_bytes: f64, retention_seconds: f64) -> f64 {
    stored_bytes / GB_BYTES * retention_seconds / MONTH_SECONDS
}

/// The table's size in steady state when messages arrive at `per_second` on average and each
/// keeps `stored_bytes` for `retention_seconds`, in GB.
pub fn steady_table_gb(stored_bytes: f64, per_second: f64, retention_seconds: f64) -> f64 {
    stored_bytes * per_second * retention_seconds / GB_BYTES
}

/// The bill per million messages of a Standard workflow (Step Functions bills transitions,
/// not requests).
pub fn per_million(usage: &Usage) -> Vec<Line> {
    let m = 1e6;
    vec![
        Line {
            item: "Step Functions state transitions",
            quantity: usage.transitions * m,
            unit: "transitions",
            usd: usage.transitions * m * price::SFN_TRANSITION_USD,
        },
        Line {
            item: "DynamoDB writes",
            quantity: usage.write_units * m,
            unit: "WRU",
            usd: usage.write_units * m * price::DYNAMODB_WRU_USD,
        },
        Line {
            item: "DynamoDB reads",
            quantity: usage.read_units * m,
            unit: "RRU",
            usd: usage.read_units * m * price::DYNAMODB_RRU_USD,
        },
        Line {
            item: "DynamoDB storage",
            quantity: gb_months(usage.stored_bytes, usage.retention_seconds) * m,
            unit: "GB-months",
            usd: gb_months(usage.stored_bytes, usage.retention_seconds) * m * price::DYNAMODB_GB_MONTH_USD,
        },
        Line {
            item: "Lambda requests",
            quantity: usage.lambda_requests * m,
            unit: "requests",
            usd: usage.lambda_requests * m * price::LAMBDA_REQUEST_USD,
        },
        Line {
            item: "Lambda duration",
            quantity: usage.lambda_gb_seconds * m,
            unit: "GB-s",
            usd: usage.lambda_gb_seconds * m * price::LAMBDA_ARM64_GB_SECOND_USD,
        },
    ]
}

/// Express instead (no transitions billed; no claims, so no claim writes or storage): dollars
/// per million messages for the requests, and for the duration of executions that each take
/// `execution_seconds` (billed in 100 ms steps) in the smallest memory step (64 MB).
pub fn express_per_million(executions_per_message: f64, execution_seconds: f64) -> (f64, f64) {
    let m = 1e6;
    let billed_seconds = (execution_seconds * 10.0).ceil().max(1.0) / 10.0;
    let gb_seconds = billed_seconds * 64.0 / 1024.0;
    (
        executions_per_message * m * price::SFN_EXPRESS_REQUEST_USD,
        executions_per_message * m * gb_seconds * price::SFN_EXPRESS_GB_SECOND_USD,
    )
}

/// Lambda's billed duration of one invocation: rounded up to the millisecond, in seconds.
pub fn billed_seconds(duration: std::time::Duration) -> f64 {
    let ms = duration.as_nanos().div_ceil(1_000_000);
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn item_sizes_follow_dynamodbs_rules() {
        assert_eq!(string_bytes("pk", 10), 12);
        // 1,767,225,600: significant digits 1767225 6 → 8 digits → 4 bytes + 1.
        assert_eq!(number_bytes("expires_at", 1_767_225_600), 10 + 4 + 1);
        assert_eq!(number_bytes("n", 10), 1 + 1 + 1, "trailing zeros trimmed");
        assert_eq!(number_bytes("n", 0), 1 + 1 + 1);
        assert_eq!(number_bytes("n", 123), 1 + 2 + 1);
    }

    #[test]
    fn request_units_round_up_per_kb_and_double_in_a_transaction() {
        assert_eq!(write_units(0, false), 1);
        assert_eq!(write_units(1024, false), 1);
        assert_eq!(write_units(1025, false), 2);
        assert_eq!(
            write_units(3000, true),
            6,
            "AWS's example: a 3 KB item in a transaction"
        );
        assert_eq!(read_units(4096), 1);
        assert_eq!(read_units(4097), 2);
    }

    fn ten() -> Transaction {
        Transaction {
            scope_bytes: "sfn-pacer-fake".len(),
            name_bytes: "batch-10-".len() + 40,
            key_bytes: vec![13; 10],
            input_bytes: 2_391,
            expires_at_epoch_s: 1_790_000_000,
        }
    }

    #[test]
    fn a_claim_transaction_weighs_its_claims_and_its_record() {
        let t = ten();
        // pk 2 + (6 + 14 + 1 + 13), kind 4 + 5, execution 9 + 49, expires_at 10 + 2 + 1 ("179").
        assert_eq!(t.claim_bytes(13), 36 + 9 + 58 + 13);
        // pk 2 + (10 + 14 + 1 + 49), kind 4 + 9, input 5 + 2391, messages 8 + 1 + 1, expires_at 13.
        assert_eq!(t.record_bytes(), 76 + 13 + 2_396 + 10 + 13);
        // Ten claims of 2 WRU and a 2.5 KB record of 2 × 3.
        assert_eq!(t.write_units(), 10 * 2 + 6);
        assert_eq!(t.stored_bytes(), 10 * 116 + 2_508 + 11 * 100);
        // With 36-character SQS ids: each claim 23 bytes longer, the input 230.
        let aws = t.with_sqs_message_ids();
        assert_eq!(aws.key_bytes, vec![36; 10]);
        assert_eq!(aws.input_bytes, 2_391 + 230);
        assert_eq!(aws.claim_bytes(36), 116 + 23);
        assert_eq!(aws.write_units(), 10 * 2 + 6);
        assert_eq!(aws.with_sqs_message_ids(), aws, "already as long");
    }

    #[test]
    fn transitions_follow_the_states_and_the_map_iterations() {
        let single = json!({"StartAt": "Work", "States": {"Work": {"Type": "Pass", "End": true}}});
        assert_eq!(transitions(&single, 10), Some(1));
        let map = json!({"StartAt": "Items", "States": {"Items": {
            "Type": "Map", "End": true,
            "ItemProcessor": {"StartAt": "Work", "States": {"Work": {"Type": "Pass", "End": true}}}
        }}});
        assert_eq!(transitions(&map, 10), Some(11));
        assert_eq!(transitions(&map, 1), Some(2));
        let chain = json!({"StartAt": "A", "States": {
            "A": {"Type": "Pass", "Next": "B"}, "B": {"Type": "Task", "Next": "C"}, "C": {"Type": "Succeed"}
        }});
        assert_eq!(transitions(&chain, 5), Some(3));
        let choice = json!({"StartAt": "C", "States": {"C": {"Type": "Choice"}}});
        assert_eq!(transitions(&choice, 1), None, "branches are not followed");
        let looping = json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "A"}}});
        assert_eq!(transitions(&looping, 1), None);
        let missing = json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "B"}}});
        assert_eq!(transitions(&missing, 1), None);
    }

    #[test]
    fn the_sample_state_machines_count_as_assumed() {
        let read = |file: &str| -> Value {
            let path = local_stack::paths::workspace_root().join("infra").join(file);
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        };
        assert_eq!(transitions(&read("state-machine.asl.json"), 1), Some(1));
        assert_eq!(transitions(&read("state-machine-batch.asl.json"), 10), Some(11));
    }

    #[test]
    fn a_confirmed_record_keeps_its_key_state_and_expiry() {
        let t = Transaction {
            scope_bytes: 13,
            name_bytes: 49,
            key_bytes: vec![36; 10],
            input_bytes: 10_640,
            expires_at_epoch_s: 1_797_000_000,
        };
        // pk 2 + 73, kind 4 + 9, state 5 + 7, expires_at 10 + 2 (1797, trailing zeros dropped) + 1.
        assert_eq!(t.trimmed_record_bytes(), 75 + 13 + 12 + 13);
        // The update bills the record as it was: 10.8 KB, 11 units (not transactional).
        assert_eq!(t.confirm_write_units(), 11);
    }

    #[test]
    fn a_million_messages_bill_each_unit_at_its_price() {
        let usage = Usage {
            executions: 0.1,
            transitions: 1.1,
            write_units: 2.6,
            read_units: 0.01,
            lambda_requests: 0.01,
            lambda_gb_seconds: 0.001,
            stored_bytes: 500.0,
            retention_seconds: ISSUE_12_RETENTION_SECONDS,
        };
        let bill = per_million(&usage);
        let usd = |item: &str| bill.iter().find(|l| l.item.starts_with(item)).unwrap().usd;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(usd("Step Functions"), 27.5));
        assert!(close(usd("DynamoDB writes"), 1.625));
        assert!(close(usd("DynamoDB reads"), 0.00125));
        assert!(close(usd("Lambda requests"), 0.002));
        assert!(close(usd("Lambda duration"), 1_000.0 * 0.000_013_333_4));
        // 500 B × 10⁶ = 0.4657 GB, kept 91 days = 2.9918 months: 1.3932 GB-months.
        let storage = usd("DynamoDB storage");
        assert!(
            (storage - 0.25 * 500e6 / GB_BYTES * 2184.0 / 730.0).abs() < 1e-9,
            "{storage}"
        );
        let steady = steady_table_gb(500.0, 100.0, ISSUE_12_RETENTION_SECONDS);
        assert!((steady - 500.0 * 100.0 * 91.0 * 86_400.0 / GB_BYTES).abs() < 1e-9);
    }

    #[test]
    fn express_bills_requests_and_100_ms_steps_of_64_mb() {
        let (requests, duration) = express_per_million(1.0, 0.03);
        assert!((requests - 1.0).abs() < 1e-12);
        assert!((duration - 1e6 * 0.1 * 0.0625 * 0.000_016_67).abs() < 1e-9);
        let (requests, duration) = express_per_million(0.1, 0.25);
        assert!((requests - 0.1).abs() < 1e-12);
        assert!((duration - 1e5 * 0.3 * 0.0625 * 0.000_016_67).abs() < 1e-9);
    }

    #[test]
    fn lambda_rounds_each_invocation_up_to_the_millisecond() {
        assert_eq!(billed_seconds(std::time::Duration::from_micros(1)), 0.001);
        assert_eq!(billed_seconds(std::time::Duration::from_millis(250)), 0.25);
        assert_eq!(billed_seconds(std::time::Duration::from_micros(250_001)), 0.251);
    }
}
