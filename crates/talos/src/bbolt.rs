//! The structure check of an etcd database: a bbolt file (go.etcd.io/bbolt),
//! read only as far as its two meta pages. Enough to tell an etcd snapshot from
//! any other file before a node is touched; etcdutl does the full check on the
//! node. Facts from bbolt's on-disk format: each page starts with a 16-byte
//! header (id u64, flags u16, count u16, overflow u32); pages 0 and 1 are meta
//! pages (flag 0x04) whose body is magic u32 = 0xED0CDAED, version u32 = 2,
//! page size u32, flags u32, root bucket (root page u64, sequence u64),
//! freelist page u64, page count u64 (high-water mark), txid u64, then a
//! checksum u64: FNV-1a 64 of the 56 bytes before it. All little-endian.
//! bbolt opens a file when either meta page is valid (it keeps two so a torn
//! write of one leaves the other).

/// bbolt's magic number.
pub const MAGIC: u32 = 0xED0C_DAED;
/// bbolt's data file format version.
pub const VERSION: u32 = 2;
/// Page header size.
pub const PAGE_HEADER: usize = 16;
/// The meta body's bytes before its checksum.
pub const META_SUMMED: usize = 56;
/// The meta page flag.
pub const META_PAGE_FLAG: u16 = 0x04;
/// A meta's freelist page when the freelist is not stored.
const NO_FREELIST: u64 = u64::MAX;

/// What a valid meta page says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoltMeta {
    pub page_size: u32,
    pub root: u64,
    pub freelist: u64,
    /// Pages in the file (high-water mark).
    pub pages: u64,
    pub txid: u64,
}

/// FNV-1a, 64 bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The meta page at `offset`, checked on its own (magic, version, checksum,
/// page flag, a sane page size).
fn meta_at(db: &[u8], offset: usize) -> Result<BoltMeta, String> {
    let end = offset + PAGE_HEADER + META_SUMMED + 8;
    if db.len() < end {
        return Err(format!(
            "{} bytes: too short for a meta page at byte {offset}",
            db.len()
        ));
    }
    let m = offset + PAGE_HEADER;
    let magic = u32_at(db, m);
    if magic != MAGIC {
        return Err(format!("bad magic {magic:#010x} (bbolt: {MAGIC:#010x})"));
    }
    let version = u32_at(db, m + 4);
    if version != VERSION {
        return Err(format!("bbolt version {version}, expected {VERSION}"));
    }
    let sum = u64_at(db, m + META_SUMMED);
    if sum != fnv1a64(&db[m..m + META_SUMMED]) {
        return Err("meta page checksum mismatch".into());
    }
    let flags = u16_at(db, offset + 8);
    if flags & META_PAGE_FLAG == 0 {
        return Err(format!("page flags {flags:#06x} are not a meta page's"));
    }
    let page_size = u32_at(db, m + 8);
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size} is not a bbolt page size"));
    }
    Ok(BoltMeta {
        page_size,
        root: u64_at(db, m + 16),
        freelist: u64_at(db, m + 32),
        pages: u64_at(db, m + 40),
        txid: u64_at(db, m + 48),
    })
}

/// Checks that `db` (a snapshot without etcd's 32-byte trailer) is a bbolt
/// database: a valid meta page 0 or 1 (the newer one wins, as bbolt reads it),
/// whose page count fits the file and whose root and freelist pages lie inside it.
pub fn check_db(db: &[u8]) -> Result<BoltMeta, String> {
    check_head(db, db.len() as u64)
}

/// How much of a file's start [`check_head`] needs: meta page 1 of the largest
/// page size, and its header.
pub const HEAD_LEN: usize = 65536 + 4096;

/// [`check_db`] on the first bytes of a database of `len` bytes (at least
/// [`HEAD_LEN`] of them, or all): a large snapshot need not be read whole.
pub fn check_head(db: &[u8], len: u64) -> Result<BoltMeta, String> {
    let first = meta_at(db, 0);
    // Meta page 1 sits one page further: the size meta 0 gives, else the
    // usual sizes in turn.
    let second = match &first {
        Ok(m) => meta_at(db, m.page_size as usize),
        Err(_) => [4096usize, 16384, 65536, 8192, 32768, 512, 1024, 2048]
            .iter()
            .map(|ps| meta_at(db, *ps))
            .find(|m| m.is_ok())
            .unwrap_or_else(|| Err("no valid meta page at any page size".into())),
    };
    let meta = match (first, second) {
        (Ok(a), Ok(b)) => {
            if b.txid > a.txid {
                b
            } else {
                a
            }
        }
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => a,
        (Err(e), Err(_)) => {
            return Err(format!(
                "not a valid etcd database: no valid bbolt meta page (page 0: {e})"
            ))
        }
    };
    let ps = u64::from(meta.page_size);
    if meta.pages < 2 || meta.pages.saturating_mul(ps) > len {
        return Err(format!(
            "not a valid etcd database: the meta page counts {} pages of {ps} bytes, the file holds {len} bytes (truncated?)",
            meta.pages
        ));
    }
    if meta.root < 2 || meta.root >= meta.pages {
        return Err(format!(
            "not a valid etcd database: root page {} outside the file's {} pages",
            meta.root, meta.pages
        ));
    }
    if meta.freelist != NO_FREELIST && (meta.freelist < 2 || meta.freelist >= meta.pages) {
        return Err(format!(
            "not a valid etcd database: freelist page {} outside the file's {} pages",
            meta.freelist, meta.pages
        ));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bbolt file: two meta pages, a freelist and a root page.
    fn db(ps: usize) -> Vec<u8> {
        let pages = 4u64;
        let mut d = vec![0u8; ps * pages as usize];
        for (i, txid) in [(0usize, 4u64), (1, 3)] {
            let o = i * ps;
            d[o..o + 8].copy_from_slice(&(i as u64).to_le_bytes());
            d[o + 8..o + 10].copy_from_slice(&META_PAGE_FLAG.to_le_bytes());
            let m = o + PAGE_HEADER;
            d[m..m + 4].copy_from_slice(&MAGIC.to_le_bytes());
            d[m + 4..m + 8].copy_from_slice(&VERSION.to_le_bytes());
            d[m + 8..m + 12].copy_from_slice(&(ps as u32).to_le_bytes());
            d[m + 16..m + 24].copy_from_slice(&3u64.to_le_bytes());
            d[m + 32..m + 40].copy_from_slice(&2u64.to_le_bytes());
            d[m + 40..m + 48].copy_from_slice(&pages.to_le_bytes());
            d[m + 48..m + 56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&d[m..m + META_SUMMED]);
            d[m + 56..m + 64].copy_from_slice(&sum.to_le_bytes());
        }
        d
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_bbolt_file_passes_and_others_do_not() {
        let good = db(4096);
        let m = check_db(&good).unwrap();
        assert_eq!((m.page_size, m.txid, m.pages), (4096, 4, 4));
        // One torn meta page: the other one still opens the file.
        let mut torn = good.clone();
        torn[16 + 20] ^= 0xff;
        assert_eq!(check_db(&torn).unwrap().txid, 3);
        // Random bytes.
        let e = check_db(&[7u8; 8192]).unwrap_err();
        assert!(e.contains("bad magic"), "{e}");
        // A wrong version in both.
        let mut v = good.clone();
        for o in [16 + 4, 4096 + 16 + 4] {
            v[o] = 1;
        }
        assert!(check_db(&v).unwrap_err().contains("version 1"));
        // Truncated below its page count.
        assert!(check_db(&good[..3 * 4096])
            .unwrap_err()
            .contains("truncated"));
        assert!(check_db(&db(16384)).is_ok());
        // The head of a larger file is enough; its length still counts.
        assert!(check_head(&good[..8192], 4 * 4096).is_ok());
        assert!(check_head(&good[..8192], 3 * 4096).is_err());
    }
}
