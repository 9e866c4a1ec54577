//! Quarantine: malformed and rejected records with their reason and location.

use super::*;

pub struct Quarantine {
    pub(crate) out: Option<BufWriter<File>>,
    pub local: PathBuf,
    pub rows: u64,
}

pub(crate) fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

impl Quarantine {
    pub fn new(local: PathBuf) -> Self {
        Quarantine {
            out: None,
            local,
            rows: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &mut self,
        object: &str,
        offset: u64,
        line: Option<u64>,
        bucket: &str,
        reason: &str,
        raw: &[u8],
        truncated_from: Option<u64>,
    ) -> Result<(), WorkerError> {
        if self.out.is_none() {
            let f = File::create(&self.local).map_err(|e| WorkerError::write(&self.local, e))?;
            self.out = Some(BufWriter::new(f));
        }
        let mut rec = serde_json::Map::new();
        rec.insert("object".into(), object.into());
        rec.insert("offset".into(), offset.into());
        if let Some(l) = line {
            rec.insert("line".into(), (l + 1).into());
        }
        rec.insert("bucket".into(), bucket.into());
        rec.insert("reason".into(), reason.into());
        match std::str::from_utf8(raw) {
            Ok(s) => rec.insert("raw".into(), s.into()),
            Err(_) => rec.insert("raw_base64".into(), b64(raw).into()),
        };
        if let Some(len) = truncated_from {
            rec.insert("raw_truncated_from_bytes".into(), len.into());
        }
        let out = self.out.as_mut().expect("opened");
        serde_json::to_writer(&mut *out, &rec)
            .map_err(|e| WorkerError::write(&self.local, e.into()))?;
        out.write_all(b"\n")
            .map_err(|e| WorkerError::write(&self.local, e))?;
        self.rows += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<Option<(PathBuf, u64)>, WorkerError> {
        match self.out {
            None => Ok(None),
            Some(mut w) => {
                w.flush().map_err(|e| WorkerError::write(&self.local, e))?;
                Ok(Some((self.local, self.rows)))
            }
        }
    }
}
