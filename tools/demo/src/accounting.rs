//! Is every message accounted for? Every good message is in exactly one execution, every bad
//! one is in the DLQ.
//!
//! The messages are known by the ids the generator put in them: a good body is
//! `{"id":"<id>",...}`, a bad one starts with `bad message <id>:` (the function's dead letters
//! and SQS's redrive keep the body). How an execution carries messages ([`Shape`]):
//! - one per execution (`MESSAGES_PER_EXECUTION` 1): the input is the body;
//! - several (`MESSAGES_PER_EXECUTION` > 1): the input is `{"items": [{"messageId", "body"}, …]}`,
//!   and the execution's name no longer says which messages it carries. A message is then in an
//!   execution when one of its items has the message's SQS `messageId`, and the body with its
//!   id. Each message is sent once (one SQS message id per producer id: [`Accounting::problems`]
//!   names any other pairing), so a message's executions are counted by its producer id.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// The message attribute with the producer's id (`producer --attribute`, default `key`).
pub const KEY_ATTRIBUTE: &str = "key";
/// The function's reason code on a dead letter.
pub const ERROR_CODE_ATTRIBUTE: &str = "sfn-pacer.error-code";
/// Most ids listed per problem.
pub const MAX_LISTED: usize = 20;

/// A message the producer generates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The producer's id (`<prefix><seq>`).
    pub id: String,
    /// Whether the body is JSON (it should start an execution) or not (it should be dead-lettered).
    pub good: bool,
    /// The body.
    pub body: String,
}

/// The messages `producer --generate count --bad-share .. --seed .. --id-prefix ..` sends, in order.
pub fn expected_messages(count: u64, bad_share: f64, seed: u64, id_prefix: &str) -> Result<Vec<Expected>, String> {
    let generator = producer::input::Generator::new(producer::input::GenerateConfig {
        count,
        size: 0,
        bad_share,
        seed,
        id_prefix: id_prefix.to_string(),
    })
    .map_err(|e| e.to_string())?;
    Ok(generator
        .map(|entry| Expected {
            good: serde_json::from_str::<serde_json::Value>(&entry.body).is_ok(),
            id: entry.id,
            body: entry.body,
        })
        .collect())
}

/// An execution found in Step Functions.
pub use local_stack::moto::Execution;

/// How executions carry messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// One message per execution, whose input is the body (`MESSAGES_PER_EXECUTION` 1).
    #[default]
    Single,
    /// Several: `{"items": [{"messageId", "body"}, …]}` (`MESSAGES_PER_EXECUTION` > 1).
    Batch,
}

impl Shape {
    /// The shape of executions started with `messages_per_execution`.
    pub fn for_messages_per_execution(messages_per_execution: u32) -> Shape {
        if messages_per_execution > 1 {
            Shape::Batch
        } else {
            Shape::Single
        }
    }
}

/// One item of a batch execution's input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Item {
    /// Its `messageId` (the SQS message id), if it has one.
    pub message_id: Option<String>,
    /// The producer's id in its `body`.
    pub id: Option<String>,
}

/// The items of a batch execution's input (`{"items": [...]}`); `None` when it has no such list.
pub fn batch_items(input: &str) -> Option<Vec<Item>> {
    let input: serde_json::Value = serde_json::from_str(input).ok()?;
    let items = input.get("items")?.as_array()?;
    Some(
        items
            .iter()
            .map(|item| Item {
                message_id: item
                    .get("messageId")
                    .and_then(serde_json::Value::as_str)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string),
                id: item.get("body").and_then(body_id),
            })
            .collect(),
    )
}

/// The producer's id of an item's body: a JSON object (or, as a string, its JSON text).
fn body_id(body: &serde_json::Value) -> Option<String> {
    match body {
        serde_json::Value::String(text) => input_id(text),
        other => id_field(other),
    }
}

/// A message found in the DLQ.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its SQS message id.
    pub message_id: String,
    /// Its body.
    pub body: String,
    /// Its string (and number) message attributes.
    pub attributes: BTreeMap<String, String>,
}

/// The producer's id in an execution input (the good body's `id` field).
pub fn input_id(input: &str) -> Option<String> {
    id_field(&serde_json::from_str::<serde_json::Value>(input).ok()?)
}

/// The `id` field of a good body.
fn id_field(body: &serde_json::Value) -> Option<String> {
    match body.get("id")? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The producer's id of a dead letter: from its body (`{"id":…}`, or `bad message <id>: …`),
/// else its `key` attribute (which is `line-<n>` for a bad body read from a file).
pub fn dead_letter_id(letter: &DeadLetter) -> Option<String> {
    if let Some(id) = input_id(&letter.body) {
        return Some(id);
    }
    if let Some(rest) = letter.body.strip_prefix("bad message ") {
        if let Some(id) = rest.split(':').next().map(str::trim).filter(|id| !id.is_empty()) {
            return Some(id.to_string());
        }
    }
    letter.attributes.get(KEY_ATTRIBUTE).filter(|k| !k.is_empty()).cloned()
}

/// A count and the first few ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ids {
    /// How many.
    pub count: u64,
    /// The first [`MAX_LISTED`].
    pub first: Vec<String>,
}

impl Ids {
    fn push(&mut self, id: impl Into<String>) {
        self.count += 1;
        if self.first.len() < MAX_LISTED {
            self.first.push(id.into());
        }
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The verdict on a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Accounting {
    /// How the executions carry messages.
    pub shape: Shape,
    /// Good messages generated.
    pub good: u64,
    /// Bad messages generated.
    pub bad: u64,
    /// Executions found.
    pub executions: u64,
    /// Messages the executions carry: their items (batch), one each (single).
    pub carried: u64,
    /// The most messages one execution carries.
    pub largest_execution: u64,
    /// Good messages in exactly one execution.
    pub good_started_once: u64,
    /// Good messages with no execution (and not in the DLQ).
    pub good_not_started: Ids,
    /// Good messages with more than one execution.
    pub good_started_more_than_once: Ids,
    /// Good messages in the DLQ (redriven after maxReceiveCount, or rejected).
    pub good_in_dlq: Ids,
    /// Bad messages in the DLQ.
    pub bad_in_dlq: u64,
    /// Bad messages not in the DLQ.
    pub bad_not_in_dlq: Ids,
    /// Bad messages that started an execution.
    pub bad_started: Ids,
    /// Executions whose input is not one of the generated messages (single), or holds no
    /// `items` list (batch), by name.
    pub unexpected_executions: Ids,
    /// Batch: items with no `messageId`, or whose body is not a generated message
    /// (`<execution name>[<index>]`).
    pub unexpected_items: Ids,
    /// Batch: messages carried under two SQS message ids (sent twice), or SQS message ids that
    /// carry two messages.
    pub message_id_conflicts: Ids,
    /// Messages in the DLQ: all copies.
    pub dlq_depth: u64,
    /// DLQ messages that are not one of the generated messages (by message id).
    pub unexpected_dead_letters: Ids,
    /// Extra copies of a message in the DLQ (dead-lettered more than once).
    pub dlq_extra_copies: u64,
    /// Dead letters by the function's `sfn-pacer.error-code`.
    pub reasons: BTreeMap<String, u64>,
    /// Dead letters without a reason: moved by SQS's redrive after maxReceiveCount.
    pub redriven: u64,
}

/// Compares what was generated with what was found, executions of `shape`.
pub fn account(
    expected: &[Expected],
    executions: &[Execution],
    dead_letters: &[DeadLetter],
    shape: Shape,
) -> Accounting {
    let mut a = Accounting {
        shape,
        executions: executions.len() as u64,
        dlq_depth: dead_letters.len() as u64,
        ..Accounting::default()
    };
    let good: HashMap<&str, bool> = expected.iter().map(|e| (e.id.as_str(), e.good)).collect();
    let started = match shape {
        Shape::Single => started_singly(&mut a, executions, &good),
        Shape::Batch => started_in_batches(&mut a, executions, &good),
    };
    let mut in_dlq: HashMap<String, u64> = HashMap::new();
    for letter in dead_letters {
        match letter.attributes.get(ERROR_CODE_ATTRIBUTE) {
            Some(code) => *a.reasons.entry(code.clone()).or_default() += 1,
            None => a.redriven += 1,
        }
        match dead_letter_id(letter) {
            Some(id) if good.contains_key(id.as_str()) => *in_dlq.entry(id).or_default() += 1,
            _ => a.unexpected_dead_letters.push(letter.message_id.clone()),
        }
    }
    a.dlq_extra_copies = in_dlq.values().map(|n| n.saturating_sub(1)).sum();
    for e in expected {
        let starts = started.get(&e.id).copied().unwrap_or(0);
        let dead = in_dlq.get(&e.id).copied().unwrap_or(0) > 0;
        if e.good {
            a.good += 1;
            match starts {
                0 if dead => a.good_in_dlq.push(e.id.as_str()),
                0 => a.good_not_started.push(e.id.as_str()),
                1 => a.good_started_once += 1,
                n => a.good_started_more_than_once.push(format!("{} ({n} executions)", e.id)),
            }
            if dead && starts > 0 {
                a.good_in_dlq.push(e.id.as_str());
            }
        } else {
            a.bad += 1;
            if dead {
                a.bad_in_dlq += 1;
            } else {
                a.bad_not_in_dlq.push(e.id.as_str());
            }
            if starts > 0 {
                a.bad_started.push(e.id.as_str());
            }
        }
    }
    a
}

/// Single: each execution's input is a message's body. Returns its executions per message id.
fn started_singly(a: &mut Accounting, executions: &[Execution], known: &HashMap<&str, bool>) -> HashMap<String, u64> {
    let mut started: HashMap<String, u64> = HashMap::new();
    for execution in executions {
        match input_id(&execution.input) {
            Some(id) if known.contains_key(id.as_str()) => *started.entry(id).or_default() += 1,
            _ => a.unexpected_executions.push(execution.name.clone()),
        }
    }
    a.carried = executions.len() as u64;
    a.largest_execution = u64::from(!executions.is_empty());
    started
}

/// Batch: each execution's input is `{"items": [...]}`. Returns the executions that carry each
/// message (an item counts once per execution it is in, twice if it is there twice).
fn started_in_batches(
    a: &mut Accounting,
    executions: &[Execution],
    known: &HashMap<&str, bool>,
) -> HashMap<String, u64> {
    let mut started: HashMap<String, u64> = HashMap::new();
    // SQS message id → producer id, and producer id → SQS message id, as first seen.
    let mut by_message_id: HashMap<String, String> = HashMap::new();
    let mut by_id: HashMap<String, String> = HashMap::new();
    for execution in executions {
        let Some(items) = batch_items(&execution.input) else {
            a.unexpected_executions.push(execution.name.clone());
            continue;
        };
        a.carried += items.len() as u64;
        a.largest_execution = a.largest_execution.max(items.len() as u64);
        for (index, item) in items.into_iter().enumerate() {
            let (Some(message_id), Some(id)) = (item.message_id, item.id) else {
                a.unexpected_items.push(format!("{}[{index}]", execution.name));
                continue;
            };
            if !known.contains_key(id.as_str()) {
                a.unexpected_items.push(format!("{}[{index}]", execution.name));
                continue;
            }
            let carries = by_message_id.entry(message_id.clone()).or_insert_with(|| id.clone());
            if *carries != id {
                a.message_id_conflicts
                    .push(format!("SQS message {message_id} carries {carries} and {id}"));
            }
            let sent_as = by_id.entry(id.clone()).or_insert_with(|| message_id.clone());
            if *sent_as != message_id {
                a.message_id_conflicts
                    .push(format!("{id} is SQS message {sent_as} and {message_id}"));
            }
            *started.entry(id).or_default() += 1;
        }
    }
    started
}

impl Accounting {
    /// Messages per execution: what the executions carry ÷ the executions (0 when none).
    pub fn messages_per_execution(&self) -> f64 {
        match self.executions {
            0 => 0.0,
            n => self.carried as f64 / n as f64,
        }
    }

    /// What is wrong, one sentence each; empty when every message is accounted for.
    pub fn problems(&self) -> Vec<String> {
        let list = |ids: &Ids| {
            let more = ids.count.saturating_sub(ids.first.len() as u64);
            let mut text = ids.first.join(", ");
            if more > 0 {
                text.push_str(&format!(", … and {more} more"));
            }
            text
        };
        let mut out = Vec::new();
        let mut check = |ids: &Ids, what: &str| {
            if !ids.is_empty() {
                out.push(format!("{} {what}: {}", ids.count, list(ids)));
            }
        };
        check(&self.good_not_started, "good message(s) have no execution");
        check(
            &self.good_started_more_than_once,
            "good message(s) have more than one execution",
        );
        check(&self.good_in_dlq, "good message(s) are in the DLQ");
        check(&self.bad_not_in_dlq, "bad message(s) are not in the DLQ");
        check(&self.bad_started, "bad message(s) started an execution");
        check(&self.unexpected_executions, "execution(s) match no generated message");
        check(
            &self.unexpected_items,
            "execution item(s) have no messageId or match no generated message",
        );
        check(&self.message_id_conflicts, "SQS message id conflict(s)");
        check(
            &self.unexpected_dead_letters,
            "DLQ message(s) match no generated message",
        );
        out
    }

    /// Whether every message is accounted for.
    pub fn is_complete(&self) -> bool {
        self.problems().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(id: &str) -> Expected {
        Expected {
            id: id.into(),
            good: true,
            body: String::new(),
        }
    }

    fn bad(id: &str) -> Expected {
        Expected {
            id: id.into(),
            good: false,
            body: String::new(),
        }
    }

    fn execution(name: &str, id: &str) -> Execution {
        Execution {
            name: name.into(),
            input: serde_json::json!({"id": id, "payload": ""}).to_string(),
        }
    }

    fn letter(message_id: &str, id: &str, code: Option<&str>) -> DeadLetter {
        let mut attributes = BTreeMap::new();
        attributes.insert(KEY_ATTRIBUTE.to_string(), id.to_string());
        if let Some(code) = code {
            attributes.insert(ERROR_CODE_ATTRIBUTE.to_string(), code.to_string());
            attributes.insert("sfn-pacer.message-id".to_string(), message_id.to_string());
        }
        DeadLetter {
            message_id: message_id.into(),
            body: format!("bad message {id}: this body is not JSON {{"),
            attributes,
        }
    }

    #[test]
    fn the_generator_is_reproduced_exactly() {
        let expected = expected_messages(1000, 0.01, 7, "run-").unwrap();
        assert_eq!(expected.len(), 1000);
        assert_eq!(expected.iter().filter(|e| !e.good).count(), 10);
        assert_eq!(expected[0].id, "run-0");
        assert_eq!(expected[999].id, "run-999");
        assert_eq!(expected, expected_messages(1000, 0.01, 7, "run-").unwrap());
        assert_ne!(expected, expected_messages(1000, 0.01, 8, "run-").unwrap());
        assert!(expected_messages(10, 1.5, 1, "").is_err());
        for e in &expected {
            if e.good {
                assert_eq!(input_id(&e.body).as_deref(), Some(e.id.as_str()));
                // The producer reads the same id from the line (`--stdin`).
                assert_eq!(producer::input::entry_from_line(0, 1, &e.body).id, e.id);
            } else {
                let letter = DeadLetter {
                    body: e.body.clone(),
                    ..DeadLetter::default()
                };
                assert_eq!(dead_letter_id(&letter).as_deref(), Some(e.id.as_str()), "{}", e.body);
                assert!(!e.body.contains('\n'), "one line per message");
            }
        }
    }

    #[test]
    fn ids_come_from_inputs_attributes_and_bodies() {
        assert_eq!(input_id(r#"{"id":"m-1","payload":""}"#).as_deref(), Some("m-1"));
        assert_eq!(input_id(r#"{"id":42}"#).as_deref(), Some("42"));
        assert_eq!(input_id(r#"{"order":1}"#), None);
        assert_eq!(input_id("not json"), None);
        let mut l = letter("x", "m-3", Some("BodyNotJson"));
        l.attributes.insert(KEY_ATTRIBUTE.into(), "line-4".into());
        assert_eq!(dead_letter_id(&l).as_deref(), Some("m-3"), "the body wins over the key");
        l.body = r#"{"id":"m-4"}"#.into();
        assert_eq!(dead_letter_id(&l).as_deref(), Some("m-4"), "from a JSON body");
        l.body = "something else".into();
        assert_eq!(dead_letter_id(&l).as_deref(), Some("line-4"), "else the key attribute");
        l.attributes.clear();
        assert_eq!(dead_letter_id(&l), None);
    }

    #[test]
    fn a_clean_run_is_complete() {
        let expected = vec![good("a"), good("b"), bad("c"), good("d"), bad("e")];
        let executions = vec![execution("u1", "a"), execution("u2", "b"), execution("u4", "d")];
        let letters = vec![
            letter("u3", "c", Some("BodyNotJson")),
            letter("u5", "e", None), // redriven
        ];
        let a = account(&expected, &executions, &letters, Shape::Single);
        assert!(a.is_complete(), "{:?}", a.problems());
        assert_eq!((a.good, a.bad, a.good_started_once, a.bad_in_dlq), (3, 2, 3, 2));
        assert_eq!(a.reasons, BTreeMap::from([("BodyNotJson".to_string(), 1)]));
        assert_eq!(a.redriven, 1);
        assert_eq!(a.dlq_depth, 2);
        assert_eq!(a.executions, 3);
    }

    #[test]
    fn every_kind_of_loss_is_named() {
        let expected = vec![good("a"), good("b"), good("c"), bad("d"), bad("e"), good("f")];
        let executions = vec![
            execution("u1", "a"),
            execution("u1-again", "a"), // a second send of the same message
            execution("u4", "d"),       // a bad message started (cannot happen, but is caught)
            execution("u9", "zzz"),     // not ours
        ];
        let letters = vec![
            letter("u4", "d", Some("BodyNotJson")),
            letter("u4b", "d", Some("BodyNotJson")), // dead-lettered twice
            letter("u6", "f", None),                 // a good message redriven
            DeadLetter {
                message_id: "u0".into(),
                body: "?".into(),
                attributes: BTreeMap::new(),
            },
        ];
        let a = account(&expected, &executions, &letters, Shape::Single);
        assert!(!a.is_complete());
        assert_eq!(a.good_started_more_than_once.first, vec!["a (2 executions)"]);
        assert_eq!(a.good_not_started.first, vec!["b", "c"]);
        assert_eq!(a.good_in_dlq.first, vec!["f"]);
        assert_eq!(a.bad_not_in_dlq.first, vec!["e"]);
        assert_eq!(a.bad_started.first, vec!["d"]);
        assert_eq!(a.unexpected_executions.first, vec!["u9"]);
        assert_eq!(a.unexpected_dead_letters.first, vec!["u0"]);
        assert_eq!(a.dlq_extra_copies, 1);
        assert_eq!(a.reasons["BodyNotJson"], 2);
        assert_eq!(a.redriven, 2);
        let problems = a.problems();
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert!(problems[0].starts_with("2 good message(s) have no execution: b, c"));
    }

    /// A batch execution carrying `(SQS message id, producer id)` pairs.
    fn batch(name: &str, members: &[(&str, &str)]) -> Execution {
        let items: Vec<serde_json::Value> = members
            .iter()
            .map(|(message_id, id)| serde_json::json!({"messageId": message_id, "body": {"id": id, "payload": ""}}))
            .collect();
        Execution {
            name: name.into(),
            input: serde_json::json!({ "items": items }).to_string(),
        }
    }

    #[test]
    fn batch_items_are_read_in_both_input_modes() {
        let items = batch_items(
            r#"{"items":[{"messageId":"u1","body":{"id":"a"}},
                {"messageId":"u2","body":"{\"id\":\"b\"}","attributes":{}},
                {"body":{"id":"c"}}, {"messageId":"u4","body":"not json"}]}"#,
        )
        .unwrap();
        let pairs: Vec<(Option<&str>, Option<&str>)> = items
            .iter()
            .map(|i| (i.message_id.as_deref(), i.id.as_deref()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (Some("u1"), Some("a")),
                (Some("u2"), Some("b")),
                (None, Some("c")),
                (Some("u4"), None)
            ]
        );
        assert_eq!(batch_items(r#"{"id":"a"}"#), None, "a single input has no items");
        assert_eq!(batch_items("not json"), None);
        assert_eq!(Shape::for_messages_per_execution(1), Shape::Single);
        assert_eq!(Shape::for_messages_per_execution(10), Shape::Batch);
    }

    #[test]
    fn a_clean_batch_run_is_complete() {
        let expected = vec![good("a"), good("b"), bad("c"), good("d"), good("e")];
        let executions = vec![
            batch("batch-3-x", &[("u1", "a"), ("u2", "b"), ("u4", "d")]),
            batch("batch-1-y", &[("u5", "e")]),
        ];
        let letters = vec![letter("u3", "c", Some("BodyNotJson"))];
        let a = account(&expected, &executions, &letters, Shape::Batch);
        assert!(a.is_complete(), "{:?}", a.problems());
        assert_eq!((a.good, a.good_started_once, a.bad_in_dlq), (4, 4, 1));
        assert_eq!((a.executions, a.carried, a.largest_execution), (2, 4, 3));
        assert!((a.messages_per_execution() - 2.0).abs() < 1e-9);
        assert_eq!(a.shape, Shape::Batch);
    }

    #[test]
    fn a_message_in_two_batch_executions_is_a_failure() {
        let expected = vec![good("a"), good("b"), good("c"), bad("d")];
        let executions = vec![
            batch("batch-2-x", &[("u1", "a"), ("u2", "b")]),
            // A redelivery of u2 next to other neighbours, started again.
            batch("batch-2-y", &[("u2", "b"), ("u3", "c")]),
            // The same message twice in one execution.
            batch("batch-2-z", &[("u3", "c"), ("u3", "c")]),
            // Not a batch input, an item without messageId, an item of no generated message,
            // a bad message started.
            execution("single", "a"),
            batch("batch-3-w", &[("", "a"), ("u9", "zzz"), ("u4", "d")]),
            // The same producer id under another SQS message id (sent twice).
            batch("batch-1-v", &[("u1-again", "a")]),
        ];
        let letters = vec![letter("u4", "d", Some("BodyNotJson"))];
        let a = account(&expected, &executions, &letters, Shape::Batch);
        assert!(!a.is_complete());
        assert_eq!(
            a.good_started_more_than_once.first,
            vec!["a (2 executions)", "b (2 executions)", "c (3 executions)"]
        );
        assert_eq!(a.good_started_once, 0);
        assert_eq!(a.unexpected_executions.first, vec!["single"]);
        assert_eq!(a.unexpected_items.first, vec!["batch-3-w[0]", "batch-3-w[1]"]);
        assert_eq!(a.bad_started.first, vec!["d"]);
        assert_eq!(a.message_id_conflicts.first, vec!["a is SQS message u1 and u1-again"]);
        assert_eq!((a.executions, a.carried, a.largest_execution), (6, 10, 3));
        let problems = a.problems();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(problems[0].starts_with("3 good message(s) have more than one execution"));
    }

    #[test]
    fn long_lists_are_cut() {
        let expected: Vec<Expected> = (0..100).map(|i| good(&format!("m{i}"))).collect();
        let a = account(&expected, &[], &[], Shape::Single);
        assert_eq!(a.good_not_started.count, 100);
        assert_eq!(a.good_not_started.first.len(), MAX_LISTED);
        assert!(a.problems()[0].ends_with("… and 80 more"), "{}", a.problems()[0]);
    }
}
