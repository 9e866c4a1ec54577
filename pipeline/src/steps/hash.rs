//! `hash`: a keyed SHA-256 of a string column (salted or HMAC), lowercase hex. The key comes from
//! an environment variable or a key file, never from the pipeline file.

use arrow::array::ArrayRef;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::strings::map_strings;
use super::*;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgorithm {
    /// `hex(sha256(key || value))`: the key is a salt prefix.
    SaltedSha256,
    /// `hex(hmac_sha256(key, value))`.
    HmacSha256,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashStep {
    pub column: String,
    #[serde(default)]
    pub output: Option<String>,
    pub algorithm: HashAlgorithm,
    /// Environment variable holding the key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// File holding the key (relative to the pipeline file); one trailing newline is ignored.
    #[serde(default)]
    pub key_file: Option<String>,
}

impl StepKind for HashStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        if self.key_env.is_some() == self.key_file.is_some() {
            return Err(cx.err(
                "key_env",
                "set exactly one of key_env or key_file (keys are never inline)",
            ));
        }
        cx.string_to(
            cols,
            &self.column,
            self.output.as_deref(),
            ColumnType::String,
        )
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        let key = self.key(cx)?;
        let (slot, out) = cx
            .slots
            .derived(&self.column, &self.output, ColumnType::String);
        kernel(Hash {
            slot,
            out,
            algorithm: self.algorithm,
            key,
        })
    }
}

impl HashStep {
    /// The key, from its environment variable or its key file (a trailing line end is not part
    /// of the key).
    fn key(&self, cx: &CompileCx<'_>) -> Result<Vec<u8>, String> {
        let key = match (&self.key_env, &self.key_file) {
            (Some(var), _) => cx
                .resources
                .env(var)
                .ok_or_else(|| format!("environment variable {var} (key_env) is not set"))?
                .into_bytes(),
            (_, Some(file)) => {
                let path = cx.resolve(file);
                let mut k = cx
                    .resources
                    .read(&path)
                    .map_err(|e| format!("key_file {}: {e}", path.display()))?;
                if k.ends_with(b"\n") {
                    k.pop();
                    if k.ends_with(b"\r") {
                        k.pop();
                    }
                }
                k
            }
            _ => unreachable!("validated"),
        };
        if key.is_empty() {
            return Err("the key is empty".into());
        }
        Ok(key)
    }
}

/// The key stays out of debug output.
struct Hash {
    slot: usize,
    out: usize,
    algorithm: HashAlgorithm,
    key: Vec<u8>,
}

impl Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hash")
            .field("slot", &self.slot)
            .field("out", &self.out)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Kernel for Hash {
    fn run(&self, rows: &mut dyn Rows) -> Result<(), StepError> {
        let a = hash(rows.column(self.slot), self.algorithm, &self.key);
        rows.set_column(self.out, a);
        Ok(())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `bytes` (at most 32, a SHA-256 digest) as lowercase hex, written as bytes and appended once
/// (not a `String::push` per digit).
fn push_hex(bytes: &[u8], out: &mut String) {
    let mut digits = [0u8; 64];
    for (pair, &b) in digits.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[(b >> 4) as usize];
        pair[1] = HEX[(b & 15) as usize];
    }
    let hex = &digits[..2 * bytes.len().min(32)];
    out.push_str(std::str::from_utf8(hex).expect("hex digits are ASCII"));
}

/// Keyed SHA-256 of each value, lowercase hex. Nulls stay null.
pub fn hash(col: &ArrayRef, algorithm: HashAlgorithm, key: &[u8]) -> ArrayRef {
    match algorithm {
        HashAlgorithm::SaltedSha256 => {
            let mut base = Sha256::new();
            base.update(key);
            map_strings(col, |s, out| {
                let mut h = base.clone();
                h.update(s.as_bytes());
                push_hex(&h.finalize(), out);
            })
        }
        HashAlgorithm::HmacSha256 => {
            let base = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            map_strings(col, |s, out| {
                let mut m = base.clone();
                m.update(s.as_bytes());
                push_hex(&m.finalize().into_bytes(), out);
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn digests_print_as_lowercase_hex() {
        let bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0xA5).collect();
        for n in [0, 1, 16, 32] {
            let mut out = String::from("x");
            push_hex(&bytes[..n], &mut out);
            let want: String = bytes[..n].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(out, format!("x{want}"));
        }
    }

    #[test]
    fn salted_sha256_matches_the_workload_definition() {
        // sha256("tributary-pii-v1:" + "alice@example.com"), computed independently with sha256sum
        let col = string_array(vec![Some("alice@example.com"), None]);
        let out = hash(&col, HashAlgorithm::SaltedSha256, b"tributary-pii-v1:");
        let mut h = Sha256::new();
        h.update(b"tributary-pii-v1:alice@example.com");
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(strs(&out), [Some(want), None]);
        // HMAC-SHA256 test vector from RFC 4231 (test case 2)
        let out = hash(
            &string_array(vec![Some("what do ya want for nothing?")]),
            HashAlgorithm::HmacSha256,
            b"Jefe",
        );
        assert_eq!(
            strs(&out)[0].as_deref(),
            Some("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    struct KeyFile;
    impl Resources for KeyFile {
        fn env(&self, var: &str) -> Option<String> {
            (var == "K").then(|| "Jefe".into())
        }
        fn read(&self, p: &Path) -> std::io::Result<Vec<u8>> {
            assert_eq!(p, Path::new("/fixtures/keys/pii.key"));
            Ok(b"Jefe\r\n".to_vec())
        }
    }

    #[test]
    fn keys_come_from_the_environment_or_a_file_without_its_line_end() {
        let value = Some("what do ya want for nothing?");
        for keys in ["key_env = \"K\"", "key_file = \"keys/pii.key\""] {
            let body = format!("column = \"e\"\nalgorithm = \"hmac_sha256\"\n{keys}");
            let (c, _) = compile_step("hash", &body, &["e"], &KeyFile).unwrap();
            let mut rows = TestRows::new(vec![string_array(vec![value])]);
            run(&c, &mut rows);
            assert!(
                rows.strs(1)[0].as_deref().unwrap().starts_with("5bdcc146"),
                "{keys}"
            );
        }
        let e = compile_step(
            "hash",
            "column = \"e\"\nalgorithm = \"hmac_sha256\"\nkey_env = \"NOPE\"",
            &["e"],
            &KeyFile,
        )
        .unwrap_err();
        assert!(e.contains("NOPE (key_env) is not set"), "{e}");
    }

    #[test]
    fn a_key_is_never_inline_and_never_shown() {
        let e = check_step(
            "hash",
            "column = \"e\"\nalgorithm = \"salted_sha256\"",
            &[("e", ColumnType::String)],
        )
        .unwrap_err();
        assert!(e.contains("exactly one of key_env or key_file"), "{e}");
        let (c, _) = compile_step(
            "hash",
            "column = \"e\"\nalgorithm = \"hmac_sha256\"\nkey_env = \"K\"",
            &["e"],
            &KeyFile,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("Jefe"));
    }
}
