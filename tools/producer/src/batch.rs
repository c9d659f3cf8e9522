//! Messages and their batching for `SendMessageBatch`.
//!
//! SQS limits one `SendMessageBatch` call to [`MAX_BATCH_ENTRIES`] entries and to
//! [`MAX_BATCH_BYTES`] bytes in total, where an entry's size is its body plus, for each
//! message attribute, the name, the data type and the value (all UTF-8 bytes).

/// Most entries in one `SendMessageBatch` call.
pub const MAX_BATCH_ENTRIES: usize = 10;

/// Most bytes in one `SendMessageBatch` call, and in one message (1 MiB).
pub const MAX_BATCH_BYTES: usize = 1_048_576;

/// The data type of the string message attributes we send.
const STRING_TYPE: &str = "String";

/// One message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the input (0-based). Unique within a run; used as the batch entry `Id`.
    pub seq: u64,
    /// The logical id used in reports: the body's `id` field, else `line-<n>` (1-based).
    pub id: String,
    /// The message body, sent verbatim.
    pub body: String,
    /// String message attributes (name, value).
    pub attributes: Vec<(String, String)>,
    /// FIFO: the `MessageGroupId`.
    pub group_id: Option<String>,
    /// FIFO: the `MessageDeduplicationId`.
    pub dedup_id: Option<String>,
}

impl Entry {
    /// A plain entry: no attributes, no FIFO fields.
    pub fn new(seq: u64, id: impl Into<String>, body: impl Into<String>) -> Entry {
        Entry {
            seq,
            id: id.into(),
            body: body.into(),
            attributes: Vec::new(),
            group_id: None,
            dedup_id: None,
        }
    }

    /// The batch entry `Id` (unique within a call: the input position).
    pub fn entry_id(&self) -> String {
        self.seq.to_string()
    }

    /// The size SQS counts for this message, in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(name, value)| name.len() + STRING_TYPE.len() + value.len())
                .sum::<usize>()
    }
}

/// Collects entries into one batch, within a count and a byte limit.
#[derive(Debug)]
pub struct BatchBuilder {
    max_entries: usize,
    max_bytes: usize,
    entries: Vec<Entry>,
    bytes: usize,
    /// An entry that did not fit: it opens the next batch.
    holdover: Option<Entry>,
}

/// Why an entry cannot be sent at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLarge {
    /// The entry's size in bytes.
    pub size: usize,
    /// The limit in bytes.
    pub limit: usize,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "message is {} bytes, more than the SQS limit of {} bytes",
            self.size, self.limit
        )
    }
}

impl BatchBuilder {
    /// A builder of batches of at most `max_entries` entries (clamped to 1..=10) and
    /// `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: usize) -> BatchBuilder {
        BatchBuilder {
            max_entries: max_entries.clamp(1, MAX_BATCH_ENTRIES),
            max_bytes,
            entries: Vec::new(),
            bytes: 0,
            holdover: None,
        }
    }

    /// Checks that an entry can be sent at all (its size is within the byte limit).
    pub fn check(&self, entry: &Entry) -> Result<(), TooLarge> {
        let size = entry.size();
        if size > self.max_bytes {
            Err(TooLarge {
                size,
                limit: self.max_bytes,
            })
        } else {
            Ok(())
        }
    }

    /// Adds an entry. Call only while [`BatchBuilder::is_full`] is false. An entry that
    /// does not fit in the current batch is kept for the next one, and the batch is full.
    /// The caller checks sizes first with [`BatchBuilder::check`].
    pub fn push(&mut self, entry: Entry) {
        let size = entry.size();
        if self.holdover.is_some() || self.entries.len() >= self.max_entries {
            // Misuse: keep the entry rather than lose it; it goes out in a later batch.
            self.entries.push(entry);
            self.bytes += size;
            return;
        }
        if !self.entries.is_empty() && self.bytes + size > self.max_bytes {
            self.holdover = Some(entry);
            return;
        }
        self.entries.push(entry);
        self.bytes += size;
    }

    /// True when the current batch takes no more entries.
    pub fn is_full(&self) -> bool {
        self.holdover.is_some() || self.entries.len() >= self.max_entries
    }

    /// True when nothing is waiting (no batch, no holdover).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.holdover.is_none()
    }

    /// Entries in the current batch.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Takes the current batch; a held-over entry opens the next one.
    pub fn take(&mut self) -> Vec<Entry> {
        let batch = std::mem::take(&mut self.entries);
        self.bytes = 0;
        if let Some(entry) = self.holdover.take() {
            self.push(entry);
        }
        batch
    }
}

/// Splits entries into batches in order (used for re-sending a failed subset).
pub fn split_batches(entries: Vec<Entry>, max_entries: usize, max_bytes: usize) -> Vec<Vec<Entry>> {
    let mut builder = BatchBuilder::new(max_entries, max_bytes);
    let mut batches = Vec::new();
    for entry in entries {
        if builder.is_full() {
            batches.push(builder.take());
        }
        builder.push(entry);
    }
    while !builder.is_empty() {
        batches.push(builder.take());
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, body_len: usize) -> Entry {
        Entry::new(seq, seq.to_string(), "x".repeat(body_len))
    }

    #[test]
    fn size_counts_body_and_attributes() {
        let mut e = entry(0, 10);
        assert_eq!(e.size(), 10);
        e.attributes.push(("key".into(), "abc".into()));
        assert_eq!(e.size(), 10 + 3 + 6 + 3);
    }

    #[test]
    fn batches_hold_at_most_ten() {
        let entries: Vec<Entry> = (0..25).map(|i| entry(i, 5)).collect();
        let batches = split_batches(entries, 10, MAX_BATCH_BYTES);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        let seqs: Vec<u64> = batches.iter().flatten().map(|e| e.seq).collect();
        assert_eq!(seqs, (0..25).collect::<Vec<_>>());
    }

    #[test]
    fn batches_stay_within_the_byte_limit() {
        // 300 KiB each: three fit in 1 MiB, the fourth opens a new batch.
        let entries: Vec<Entry> = (0..7).map(|i| entry(i, 300 * 1024)).collect();
        let batches = split_batches(entries, 10, MAX_BATCH_BYTES);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        for batch in &batches {
            assert!(batch.iter().map(Entry::size).sum::<usize>() <= MAX_BATCH_BYTES);
        }
    }

    #[test]
    fn an_entry_of_exactly_the_limit_goes_alone() {
        let entries = vec![entry(0, 10), entry(1, MAX_BATCH_BYTES), entry(2, 10)];
        let batches = split_batches(entries, 10, MAX_BATCH_BYTES);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
    }

    #[test]
    fn too_large_entries_are_refused_by_check() {
        let builder = BatchBuilder::new(10, MAX_BATCH_BYTES);
        assert!(builder.check(&entry(0, MAX_BATCH_BYTES)).is_ok());
        let err = builder.check(&entry(1, MAX_BATCH_BYTES + 1)).unwrap_err();
        assert_eq!(err.size, MAX_BATCH_BYTES + 1);
        assert!(err.to_string().contains("1048576"));
    }

    #[test]
    fn builder_reports_full_on_holdover() {
        let mut b = BatchBuilder::new(10, 100);
        b.push(entry(0, 60));
        assert!(!b.is_full());
        b.push(entry(1, 60));
        assert!(b.is_full());
        assert_eq!(b.len(), 1);
        let first = b.take();
        assert_eq!(first.len(), 1);
        assert_eq!(b.len(), 1, "holdover opens the next batch");
        assert!(!b.is_full());
        assert_eq!(b.take()[0].seq, 1);
        assert!(b.is_empty());
    }

    #[test]
    fn max_entries_is_clamped() {
        let mut b = BatchBuilder::new(50, MAX_BATCH_BYTES);
        for i in 0..10 {
            b.push(entry(i, 1));
        }
        assert!(b.is_full());
    }
}
