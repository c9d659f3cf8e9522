//! Batch executions (`MESSAGES_PER_EXECUTION` > 1): up to N messages of a batch in one
//! execution whose input is `{"items": [ … ]}`.
//!
//! Invariants:
//! - every member is in exactly one group, and a group holds at most N members;
//! - a group's input is at most [`MAX_INPUT_BYTES`], unless one member alone is larger (then
//!   it is a group of its own, which the start phase claim-checks or rejects);
//! - FIFO: a group holds members of one message group only, in record order;
//! - a group's name depends only on its members' keys (the set, not the order).

use std::collections::HashMap;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::InputMode;
use crate::plan::event::Message;
use crate::plan::{Plan, MAX_INPUT_BYTES};

/// `{"items":[` and `]}`: the bytes of an input besides its items and their commas.
const WRAPPER_BYTES: usize = r#"{"items":[]}"#.len();

/// Hex digits of the SHA-256 of the members' keys kept in a batch execution's name (160 bits).
const NAME_HASH_HEX_LEN: usize = 40;

/// One message of a batch execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The records this message stands for (more than one when records share its key), in
    /// record order.
    pub records: Vec<usize>,
    /// The message's key: the name single mode would give its execution (the message id by
    /// default). Claims are keyed by it.
    pub key: String,
    /// Its item of the execution input: a JSON object with at least `messageId` and `body`.
    pub item: String,
    /// The producer's trace header.
    pub trace_header: Option<String>,
    /// The FIFO message group (empty on standard queues).
    pub group: String,
}

/// The item of one message: under `INPUT=body`, `{"messageId", "body"}` with the body (valid
/// JSON, checked by the plan) embedded byte for byte; under `INPUT=envelope`, the envelope
/// (`planned_input`) itself, which has both.
pub fn item(message: &Message, planned_input: &str, mode: InputMode) -> String {
    match mode {
        InputMode::Body => format!(r#"{{"messageId":{},"body":{planned_input}}}"#, json!(message.id)),
        InputMode::Envelope => planned_input.to_string(),
    }
}

/// Every record of `members`, in record order.
pub fn records(members: &[Member]) -> Vec<usize> {
    let mut records: Vec<usize> = members.iter().flat_map(|m| m.records.iter().copied()).collect();
    records.sort_unstable();
    records
}

/// The members of one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// In record order.
    pub members: Vec<Member>,
}

impl Group {
    /// The members' keys, in member order.
    pub fn keys(&self) -> Vec<String> {
        self.members.iter().map(|m| m.key.clone()).collect()
    }

    /// Every record of every member, in record order.
    pub fn records(&self) -> Vec<usize> {
        records(&self.members)
    }

    /// The execution input: `{"items":[…]}`, the members' items in member order.
    pub fn input(&self) -> String {
        let items: Vec<&str> = self.members.iter().map(|m| m.item.as_str()).collect();
        format!(r#"{{"items":[{}]}}"#, items.join(","))
    }

    /// The execution to start: named after the keys (`named`: `EXECUTION_NAME` is not `none`),
    /// traced with the first member's header.
    pub fn plan(&self, named: bool) -> Plan {
        Plan {
            name: named.then(|| name(&self.keys())),
            input: self.input(),
            trace_header: self.members.first().and_then(|m| m.trace_header.clone()),
        }
    }
}

/// The name of the execution of these members: `batch-<count>-<40 hex digits>`, the hex from
/// the SHA-256 of the sorted keys. Keys are execution names (no whitespace), so one `\n` after
/// each keeps the hashed text unambiguous. At most 6 + 2 + 1 + 40 characters: a valid name.
pub fn name(keys: &[String]) -> String {
    let mut sorted: Vec<&str> = keys.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut hasher = Sha256::new();
    for key in sorted {
        hasher.update(key.as_bytes());
        hasher.update(b"\n");
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("batch-{}-{}", keys.len(), &hex[..NAME_HASH_HEX_LEN])
}

/// The bytes of the input of `members` items whose lengths sum to `item_bytes`.
fn input_bytes(members: usize, item_bytes: usize) -> usize {
    WRAPPER_BYTES + item_bytes + members.saturating_sub(1)
}

/// Groups `members` (in record order) into executions of at most `per_execution` members
/// (at least 1) and [`MAX_INPUT_BYTES`] of input, one FIFO message group per execution.
/// Groups come out in the order of their first member.
pub fn group(members: Vec<Member>, per_execution: usize) -> Vec<Group> {
    let per_execution = per_execution.max(1);
    let mut groups: Vec<Group> = Vec::new();
    // The group still open for each FIFO message group, and its items' bytes.
    let mut open: HashMap<String, (usize, usize)> = HashMap::new();
    for member in members {
        let bytes = member.item.len();
        let fits = |&(g, item_bytes): &(usize, usize)| {
            let n = groups[g].members.len();
            n < per_execution && input_bytes(n + 1, item_bytes + bytes) <= MAX_INPUT_BYTES
        };
        match open.get(&member.group).copied().filter(fits) {
            Some((g, item_bytes)) => {
                open.insert(member.group.clone(), (g, item_bytes + bytes));
                groups[g].members.push(member);
            }
            None => {
                open.insert(member.group.clone(), (groups.len(), bytes));
                groups.push(Group { members: vec![member] });
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::name::is_valid_name;
    use serde_json::Value;

    fn member(i: usize, item_bytes: usize, group: &str) -> Member {
        let pad = "x".repeat(item_bytes.saturating_sub(r#"{"messageId":"m-0000","body":""}"#.len()));
        Member {
            records: vec![i],
            key: format!("m-{i:04}"),
            item: format!(r#"{{"messageId":"m-{i:04}","body":"{pad}"}}"#),
            trace_header: None,
            group: group.to_string(),
        }
    }

    fn sizes(groups: &[Group]) -> Vec<usize> {
        groups.iter().map(|g| g.members.len()).collect()
    }

    #[test]
    fn members_fill_groups_of_n_in_record_order() {
        let groups = group((0..25).map(|i| member(i, 100, "")).collect(), 10);
        assert_eq!(sizes(&groups), [10, 10, 5]);
        assert_eq!(groups[1].records(), (10..20).collect::<Vec<_>>());
        assert_eq!(
            sizes(&group((0..3).map(|i| member(i, 100, "")).collect(), 1)),
            [1, 1, 1]
        );
        assert!(group(Vec::new(), 10).is_empty());
    }

    #[test]
    fn the_input_is_an_items_array_of_exactly_the_size_counted() {
        let g = &group((0..3).map(|i| member(i, 50, "")).collect(), 10)[0];
        let input = g.input();
        assert_eq!(input.len(), input_bytes(3, 150));
        let v: Value = serde_json::from_str(&input).unwrap();
        let ids: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["messageId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["m-0000", "m-0001", "m-0002"]);
    }

    #[test]
    fn a_group_that_would_pass_the_input_limit_is_split_and_the_limit_itself_fits() {
        // Four items whose input is exactly the limit fill one group; a fifth does not fit.
        let item = (MAX_INPUT_BYTES - WRAPPER_BYTES - 3) / 4;
        let rest = (MAX_INPUT_BYTES - WRAPPER_BYTES - 3) % 4;
        let mut members: Vec<Member> = (0..4).map(|i| member(i, item, "")).collect();
        members[3] = member(3, item + rest, "");
        members.push(member(4, 10, ""));
        let groups = group(members, 10);
        assert_eq!(sizes(&groups), [4, 1]);
        assert_eq!(groups[0].input().len(), MAX_INPUT_BYTES);
        // A member too large on its own is a group of its own; its neighbours are unaffected.
        let big = MAX_INPUT_BYTES;
        let groups = group(
            [10, 10, big, 10, 10]
                .iter()
                .enumerate()
                .map(|(i, &b)| member(i, b, ""))
                .collect(),
            10,
        );
        assert_eq!(sizes(&groups), [2, 1, 2]);
        assert_eq!(groups[1].records(), [2]);
        assert!(groups
            .iter()
            .all(|g| g.input().len() <= MAX_INPUT_BYTES || g.members.len() == 1));
    }

    #[test]
    fn fifo_groups_are_never_mixed_and_keep_their_order() {
        let members: Vec<Member> = (0..9).map(|i| member(i, 50, ["a", "b", "c"][i % 3])).collect();
        let groups = group(members, 2);
        for g in &groups {
            let first = &g.members[0].group;
            assert!(g.members.iter().all(|m| &m.group == first));
            assert!(g.records().windows(2).all(|w| w[0] < w[1]));
        }
        let of_a: Vec<Vec<usize>> = groups
            .iter()
            .filter(|g| g.members[0].group == "a")
            .map(Group::records)
            .collect();
        assert_eq!(of_a, [vec![0, 3], vec![6]]);
        assert_eq!(sizes(&groups), [2, 2, 2, 1, 1, 1]);
    }

    #[test]
    fn names_are_valid_deterministic_and_depend_on_the_set_of_keys() {
        let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let a = name(&keys(&["m-1", "m-2", "m-3"]));
        assert!(is_valid_name(&a), "{a}");
        assert!(a.starts_with("batch-3-"));
        assert_eq!(a, name(&keys(&["m-3", "m-1", "m-2"])), "order does not matter");
        assert_ne!(a, name(&keys(&["m-1", "m-2"])));
        assert_ne!(
            name(&keys(&["ab", "c"])),
            name(&keys(&["a", "bc"])),
            "keys are separated"
        );
        let long: Vec<String> = (0..99).map(|i| format!("{}{i}", "k".repeat(78))).collect();
        assert!(is_valid_name(&name(&long)));
    }

    #[test]
    fn items_carry_the_message_id_and_the_body_in_either_mode() {
        let m = Message {
            id: "id-\"1\"".into(),
            body: r#"{"a": [1, 2]}"#.into(),
            ..Message::default()
        };
        let v: Value = serde_json::from_str(&item(&m, &m.body, InputMode::Body)).unwrap();
        assert_eq!(v["messageId"], "id-\"1\"");
        assert_eq!(v["body"]["a"][1], 2);
        let envelope = r#"{"messageId":"id","body":"text","attributes":{}}"#;
        assert_eq!(item(&m, envelope, InputMode::Envelope), envelope);
    }

    #[test]
    fn the_plan_names_the_group_unless_names_are_off_and_keeps_the_first_trace() {
        let mut members: Vec<Member> = (0..2).map(|i| member(i, 40, "")).collect();
        members[0].trace_header = Some("Root=1-a".into());
        let g = Group { members };
        let plan = g.plan(true);
        assert_eq!(plan.name.as_deref(), Some(name(&g.keys()).as_str()));
        assert_eq!(plan.trace_header.as_deref(), Some("Root=1-a"));
        assert_eq!(plan.input, g.input());
        assert_eq!(g.plan(false).name, None);
    }
}
