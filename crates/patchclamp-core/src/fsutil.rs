//! Files in and out: atomic writes (a reader never sees a half-written output or checkpoint)
//! and reads with a size limit (a mistaken `/dev/zero` or a 50 GB file is refused, not read).

use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// The most a spec file (config.json, an experiment, interventions, an index) may hold.
pub const SPEC_LIMIT: u64 = 256 << 20;
/// The most a prompt or corpus file may hold.
pub const TEXT_LIMIT: u64 = 1 << 30;

/// Reads `path` as UTF-8 text of at most `limit` bytes; `what` says what kind of file it is
/// in the error (`"spec files"`).
pub fn read_text(path: &Path, limit: u64, what: &'static str) -> Result<String> {
    let bytes = read_bytes(path, limit, what)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::config(
            path,
            format!(
                "not UTF-8 text (byte {} is invalid)",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Reads `path` whole, refusing more than `limit` bytes.
pub fn read_bytes(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = vec![];
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            limit: human_size(limit),
            what,
        });
    }
    Ok(bytes)
}

/// A stable 64-bit FNV-1a hash of `bytes`, as 16 hex digits (experiment identities,
/// checkpoint checksums).
pub fn content_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `256 MiB`, `1 GiB`.
fn human_size(n: u64) -> String {
    if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
        format!("{} GiB", n >> 30)
    } else {
        format!("{} MiB", n >> 20)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::write(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces() {
        let dir = std::env::temp_dir().join(format!("pc-atomic-{}", std::process::id()));
        let p = dir.join("x.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_refuse_what_is_too_large_or_not_text() {
        let dir = std::env::temp_dir().join(format!("pc-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.txt");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_text(&p, 10, "spec files").unwrap(), "0123456789");
        let e = read_text(&p, 9, "spec files").unwrap_err().to_string();
        assert!(e.contains("larger than") && e.contains("x.txt"), "{e}");
        std::fs::write(&p, [b'a', 0xff, b'b']).unwrap();
        let e = read_text(&p, 10, "spec files").unwrap_err().to_string();
        assert!(e.contains("not UTF-8") && e.contains("byte 1"), "{e}");
        // An endless device stops at the limit instead of filling memory.
        let e = read_text(Path::new("/dev/zero"), 1 << 20, "spec files").unwrap_err();
        assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
