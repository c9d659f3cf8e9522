//! Where messages come from: JSON lines (a file or stdin) or the synthetic generator, and the
//! decoration every message gets (message attribute, FIFO group and deduplication id).

use std::collections::HashSet;
use std::io::BufRead;

use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::batch::Entry;

/// The generator's settings.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// How many messages.
    pub count: u64,
    /// Pad each body with random characters to at least this many bytes (0: no padding).
    pub size: usize,
    /// Fraction (0.0 to 1.0) of messages whose body is deliberately not JSON. The number of bad
    /// messages is exactly `round(count × bad_share)`; which ones depends on `seed`.
    pub bad_share: f64,
    /// Seed of the random choices (bad positions, padding).
    pub seed: u64,
    /// Prefix of every generated id (e.g. a run id, so that reruns do not collide).
    pub id_prefix: String,
}

/// Yields `count` synthetic messages: `{"id":"<prefix><seq>","payload":"..."}`, or for the bad
/// ones a body that is not JSON and contains the word `bad`.
pub struct Generator {
    config: GenerateConfig,
    rng: StdRng,
    bad: HashSet<u64>,
    next: u64,
}

/// A generator setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// `bad_share` outside 0..=1 or not a number.
    #[error("--bad-share must be a fraction between 0 and 1, got {0}")]
    BadShare(f64),
    /// `count` does not fit this machine's address space.
    #[error("--generate {0} is too many for this machine")]
    TooMany(u64),
}

impl Generator {
    /// A generator, with its bad positions drawn from the seed.
    pub fn new(config: GenerateConfig) -> Result<Generator, GenerateError> {
        if !(0.0..=1.0).contains(&config.bad_share) {
            return Err(GenerateError::BadShare(config.bad_share));
        }
        let mut rng = StdRng::seed_from_u64(config.seed);
        let bad_count = (config.count as f64 * config.bad_share).round() as u64;
        let bad_count = bad_count.min(config.count);
        let length = usize::try_from(config.count).map_err(|_| GenerateError::TooMany(config.count))?;
        let amount = usize::try_from(bad_count).map_err(|_| GenerateError::TooMany(config.count))?;
        let bad = rand::seq::index::sample(&mut rng, length, amount)
            .into_iter()
            .map(|i| i as u64)
            .collect();
        Ok(Generator {
            config,
            rng,
            bad,
            next: 0,
        })
    }

    /// How many bad messages this generator yields in all.
    pub fn bad_count(&self) -> usize {
        self.bad.len()
    }

    fn body(&mut self, id: &str, bad: bool) -> String {
        let base = if bad {
            format!("bad message {id}: this body is not JSON {{")
        } else {
            // `{"id":…,"payload":""}`, then padding goes inside the payload string.
            serde_json::json!({ "id": id, "payload": "" }).to_string()
        };
        let pad_len = self.config.size.saturating_sub(base.len());
        if pad_len == 0 {
            return base;
        }
        let pad = Alphanumeric.sample_string(&mut self.rng, pad_len);
        if bad {
            format!("{base}{pad}")
        } else {
            serde_json::json!({ "id": id, "payload": pad }).to_string()
        }
    }
}

impl Iterator for Generator {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        if self.next >= self.config.count {
            return None;
        }
        let seq = self.next;
        self.next += 1;
        let id = format!("{}{}", self.config.id_prefix, seq);
        let bad = self.bad.contains(&seq);
        let body = self.body(&id, bad);
        Some(Entry::new(seq, id, body))
    }
}

/// The entry for one input line: the body is the line verbatim (without its line break);
/// the id is the JSON object's `id` field (string or number), else `line-<line_no>`.
pub fn entry_from_line(seq: u64, line_no: u64, line: &str) -> Entry {
    let id = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(map)) => match map.get("id") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        },
        _ => None,
    };
    let id = id.unwrap_or_else(|| format!("line-{line_no}"));
    Entry::new(seq, id, line)
}

/// What every message gets before it is sent.
#[derive(Clone, Debug, Default)]
pub struct Decoration {
    /// A string message attribute of this name, whose value is the message's id.
    pub attribute: Option<String>,
    /// FIFO queues: the number of message groups (`g0`, `g1`, …, by input position).
    /// `None` for a standard queue.
    pub fifo_groups: Option<u32>,
}

impl Decoration {
    /// Adds the attribute and the FIFO fields to an entry.
    pub fn apply(&self, entry: &mut Entry) {
        if let Some(name) = &self.attribute {
            entry.attributes.push((name.clone(), entry.id.clone()));
        }
        if let Some(groups) = self.fifo_groups {
            let groups = u64::from(groups.max(1));
            entry.group_id = Some(format!("g{}", entry.seq % groups));
            entry.dedup_id = Some(dedup_id(&entry.id));
        }
    }
}

/// A valid `MessageDeduplicationId` (1–128 printable ASCII characters) derived from an id:
/// the id itself when valid, else the hex SHA-256 of it.
pub fn dedup_id(id: &str) -> String {
    if !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()) {
        id.to_string()
    } else {
        let digest = Sha256::digest(id.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Where the messages come from.
pub enum Source {
    /// Synthetic messages.
    Generate(Box<Generator>),
    /// JSON lines (one message body per non-blank line) from a file or stdin.
    Lines(Box<dyn BufRead + Send>),
}

/// A failure to read the input.
#[derive(Debug, thiserror::Error)]
#[error("input line {line}: {source}")]
pub struct InputError {
    /// The 1-based line number.
    pub line: u64,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Reads the source on its own thread (file and stdin reads block) and sends decorated
/// entries on a bounded channel of `capacity` items. Stops at the first read error (sent as
/// the last item) or when the receiver is dropped.
pub fn spawn_reader(
    source: Source,
    decoration: Decoration,
    capacity: usize,
) -> std::io::Result<mpsc::Receiver<Result<Entry, InputError>>> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    std::thread::Builder::new()
        .name("producer-input".into())
        .spawn(move || read_into(source, &decoration, &tx))?;
    Ok(rx)
}

fn read_into(source: Source, decoration: &Decoration, tx: &mpsc::Sender<Result<Entry, InputError>>) {
    match source {
        Source::Generate(generator) => {
            for mut entry in *generator {
                decoration.apply(&mut entry);
                if tx.blocking_send(Ok(entry)).is_err() {
                    return;
                }
            }
        }
        Source::Lines(mut reader) => {
            let mut line = String::new();
            let mut line_no: u64 = 0;
            let mut seq: u64 = 0;
            loop {
                line.clear();
                line_no += 1;
                match reader.read_line(&mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        let text = line.trim_end_matches(['\n', '\r']);
                        if text.trim().is_empty() {
                            continue;
                        }
                        let mut entry = entry_from_line(seq, line_no, text);
                        seq += 1;
                        decoration.apply(&mut entry);
                        if tx.blocking_send(Ok(entry)).is_err() {
                            return;
                        }
                    }
                    Err(source) => {
                        let _ = tx.blocking_send(Err(InputError { line: line_no, source }));
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(count: u64, bad_share: f64) -> GenerateConfig {
        GenerateConfig {
            count,
            size: 0,
            bad_share,
            seed: 7,
            id_prefix: String::new(),
        }
    }

    fn is_json(body: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(body).is_ok()
    }

    #[test]
    fn generator_yields_exactly_the_bad_share() {
        let entries: Vec<Entry> = Generator::new(config(95, 0.05)).unwrap().collect();
        assert_eq!(entries.len(), 95);
        let bad: Vec<&Entry> = entries.iter().filter(|e| !is_json(&e.body)).collect();
        assert_eq!(bad.len(), 5);
        assert!(bad.iter().all(|e| e.body.contains("bad")));
        for e in entries.iter().filter(|e| is_json(&e.body)) {
            let v: serde_json::Value = serde_json::from_str(&e.body).unwrap();
            assert_eq!(v["id"], serde_json::Value::String(e.id.clone()));
            assert!(v["payload"].is_string());
        }
    }

    #[test]
    fn generator_is_deterministic_per_seed() {
        let a: Vec<Entry> = Generator::new(config(50, 0.2)).unwrap().collect();
        let b: Vec<Entry> = Generator::new(config(50, 0.2)).unwrap().collect();
        assert_eq!(a, b);
        let mut other = config(50, 0.2);
        other.seed = 8;
        let c: Vec<Entry> = Generator::new(other).unwrap().collect();
        let bad = |v: &[Entry]| {
            v.iter()
                .filter(|e| !is_json(&e.body))
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(bad(&c).len(), 10);
        assert_ne!(bad(&a), bad(&c));
    }

    #[test]
    fn generator_edges() {
        assert_eq!(Generator::new(config(10, 0.0)).unwrap().bad_count(), 0);
        assert_eq!(Generator::new(config(10, 1.0)).unwrap().bad_count(), 10);
        assert_eq!(Generator::new(config(0, 0.5)).unwrap().count(), 0);
        assert!(Generator::new(config(10, 1.5)).is_err());
        assert!(Generator::new(config(10, f64::NAN)).is_err());
    }

    #[test]
    fn generator_pads_to_size_and_prefixes_ids() {
        let mut cfg = config(20, 0.25);
        cfg.size = 1000;
        cfg.id_prefix = "run7-".into();
        for e in Generator::new(cfg).unwrap() {
            assert_eq!(e.body.len(), 1000, "{}", e.body);
            assert!(e.id.starts_with("run7-"));
        }
    }

    #[test]
    fn line_ids() {
        assert_eq!(entry_from_line(0, 1, r#"{"id":"abc","x":1}"#).id, "abc");
        assert_eq!(entry_from_line(0, 2, r#"{"id":42}"#).id, "42");
        assert_eq!(entry_from_line(0, 3, "not json").id, "line-3");
        assert_eq!(entry_from_line(0, 4, r#"["id"]"#).id, "line-4");
        assert_eq!(entry_from_line(5, 6, "x").seq, 5);
    }

    #[test]
    fn decoration_adds_attribute_and_fifo_fields() {
        let deco = Decoration {
            attribute: Some("key".into()),
            fifo_groups: Some(3),
        };
        let mut e = Entry::new(4, "order-4", "{}");
        deco.apply(&mut e);
        assert_eq!(e.attributes, vec![("key".to_string(), "order-4".to_string())]);
        assert_eq!(e.group_id.as_deref(), Some("g1"));
        assert_eq!(e.dedup_id.as_deref(), Some("order-4"));

        let mut plain = Entry::new(4, "x", "{}");
        Decoration::default().apply(&mut plain);
        assert!(plain.attributes.is_empty() && plain.group_id.is_none() && plain.dedup_id.is_none());
    }

    #[test]
    fn dedup_ids_are_valid() {
        assert_eq!(dedup_id("a-b_c"), "a-b_c");
        let hashed = dedup_id("has space");
        assert_eq!(hashed.len(), 64);
        assert_eq!(hashed, dedup_id("has space"));
        assert_eq!(dedup_id(&"x".repeat(200)).len(), 64);
        assert_eq!(dedup_id("").len(), 64);
    }

    #[test]
    fn reader_skips_blank_lines_and_numbers_lines() {
        let input = "{\"id\":\"a\"}\r\n\n  \nplain\n";
        let source = Source::Lines(Box::new(std::io::Cursor::new(input.as_bytes().to_vec())));
        let mut rx = spawn_reader(source, Decoration::default(), 4).unwrap();
        let mut got = Vec::new();
        while let Some(item) = rx.blocking_recv() {
            got.push(item.unwrap());
        }
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].seq, got[0].id.as_str(), got[0].body.as_str()),
            (0, "a", "{\"id\":\"a\"}")
        );
        assert_eq!((got[1].seq, got[1].id.as_str()), (1, "line-4"));
    }

    #[test]
    fn reader_reports_invalid_utf8() {
        let bytes = b"ok\n\xff\xfe\n".to_vec();
        let source = Source::Lines(Box::new(std::io::Cursor::new(bytes)));
        let mut rx = spawn_reader(source, Decoration::default(), 4).unwrap();
        assert!(rx.blocking_recv().unwrap().is_ok());
        let err = rx.blocking_recv().unwrap().unwrap_err();
        assert_eq!(err.line, 2);
        assert!(rx.blocking_recv().is_none());
    }
}
