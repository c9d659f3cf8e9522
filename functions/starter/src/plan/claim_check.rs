//! Claim-check (`CLAIM_CHECK_BUCKET`): an execution input too large for StartExecution
//! (262,144 bytes) and a dead letter too large for SQS (1 MiB) are stored in S3, and a small
//! pointer goes in their place: `{"claimCheck":{"bucket","key","size","sha256"}}`.
//!
//! Keys are content-addressed (`sfn-pacer/inputs/<sha256>.json`), so a redelivery stores the
//! same object again and passes the same pointer: Standard's name idempotency still holds (the
//! same name with the same input). Objects expire by the bucket's lifecycle rule (template).

use async_trait::async_trait;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Where stored inputs go.
pub const INPUT_PREFIX: &str = "sfn-pacer/inputs/";
/// Where stored dead-letter bodies go.
pub const DEAD_LETTER_PREFIX: &str = "sfn-pacer/dead-letters/";

/// A failed S3 call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ObjectError(pub String);

/// The S3 call the function makes, behind a narrow trait.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// `PutObject` of `body` (JSON) at `bucket`/`key`.
    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), ObjectError>;
}

/// Where a stored body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// The body's size, bytes.
    pub size: usize,
    /// The body's SHA-256, lowercase hex.
    pub sha256: String,
}

impl Pointer {
    /// The pointer as the JSON that replaces the body.
    pub fn to_json(&self) -> String {
        json!({"claimCheck": {"bucket": self.bucket, "key": self.key, "size": self.size, "sha256": self.sha256}})
            .to_string()
    }

    /// `s3://bucket/key`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// Stores `body` in `bucket` under `prefix`, keyed by its SHA-256; returns the pointer.
pub async fn check_in(store: &dyn ObjectStore, bucket: &str, prefix: &str, body: &str) -> Result<Pointer, ObjectError> {
    let sha256 = hex(&Sha256::digest(body.as_bytes()));
    let key = format!("{prefix}{sha256}.json");
    store.put(bucket, &key, body.as_bytes().to_vec()).await?;
    Ok(Pointer {
        bucket: bucket.to_string(),
        key,
        size: body.len(),
        sha256,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub mod memory {
    //! An in-memory S3 for tests: objects by bucket and key; one bucket may be made to fail.

    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// The objects, by (bucket, key).
    #[derive(Default)]
    pub struct MemoryObjects {
        pub objects: Mutex<HashMap<(String, String), Vec<u8>>>,
        pub failing: Option<String>,
    }

    #[async_trait]
    impl ObjectStore for MemoryObjects {
        async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), ObjectError> {
            if let Some(e) = &self.failing {
                return Err(ObjectError(e.clone()));
            }
            self.objects
                .lock()
                .unwrap()
                .insert((bucket.to_string(), key.to_string()), body);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryObjects;
    use super::*;

    #[tokio::test]
    async fn bodies_are_stored_by_their_hash_and_the_pointer_says_where() {
        let store = MemoryObjects::default();
        let body = r#"{"big":"payload"}"#;
        let p = check_in(&store, "inputs", INPUT_PREFIX, body).await.unwrap();
        assert_eq!(
            p.sha256,
            "98595d0890e25cb8922b6295f520a2000ba6df92a1260753becd772546a00f86"
        );
        assert_eq!(p.key, format!("sfn-pacer/inputs/{}.json", p.sha256));
        assert_eq!(p.size, body.len());
        let stored = store.objects.lock().unwrap()[&("inputs".to_string(), p.key.clone())].clone();
        assert_eq!(stored, body.as_bytes());
        let pointer: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(pointer["claimCheck"]["key"], p.key);
        assert_eq!(pointer["claimCheck"]["size"], body.len());
        // The same body, the same key: a redelivery passes the same pointer.
        assert_eq!(check_in(&store, "inputs", INPUT_PREFIX, body).await.unwrap(), p);
    }
}
