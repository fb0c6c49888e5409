//! Deterministic generated data: text-like (compresses ~3x, like source
//! code) and binary-like (half incompressible, half structured, like a
//! database file or VM disk). Same seed, same bytes.

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const WORDS: &[&str] = &[
    "fn",
    "let",
    "mut",
    "struct",
    "impl",
    "pub",
    "use",
    "self",
    "return",
    "match",
    "if",
    "else",
    "for",
    "while",
    "loop",
    "break",
    "Result",
    "Option",
    "Vec",
    "String",
    "u64",
    "usize",
    "error",
    "value",
    "index",
    "count",
    "buffer",
    "writer",
    "reader",
    "config",
    "chunk",
    "pack",
    "blob",
    "tree",
    "snapshot",
    "repository",
    "=",
    "->",
    "{",
    "}",
    "(",
    ");",
    "::",
    "&",
    "//",
    "0",
    "1",
];

/// A seeded generator of benchmark data.
pub struct Gen {
    rng: StdRng,
}

impl Gen {
    /// A generator; the same seed yields the same bytes.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// `len` bytes of source-code-like text.
    pub fn text(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 64);
        let mut indent = 0usize;
        while out.len() < len {
            out.extend(std::iter::repeat_n(b' ', indent * 4));
            let words = self.rng.gen_range(2..10);
            for w in 0..words {
                if w > 0 {
                    out.push(b' ');
                }
                if self.rng.gen_ratio(1, 6) {
                    // identifiers and numbers make text less repetitive
                    let n: u32 = self.rng.gen();
                    out.extend_from_slice(format!("x{n:x}").as_bytes());
                } else {
                    out.extend_from_slice(WORDS[self.rng.gen_range(0..WORDS.len())].as_bytes());
                }
            }
            out.push(b'\n');
            indent = match self.rng.gen_range(0..4) {
                0 => indent.saturating_sub(1),
                1 => (indent + 1).min(6),
                _ => indent,
            };
        }
        out.truncate(len);
        out
    }

    /// `len` bytes of binary data: 4 KiB pages, half random, a quarter
    /// structured records, a quarter zero-padded.
    pub fn binary(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for page in out.chunks_mut(4096) {
            match self.rng.gen_range(0..4) {
                0 | 1 => self.rng.fill_bytes(page),
                2 => {
                    // records: small counters and a few random bytes
                    let base: u32 = self.rng.gen();
                    for (i, rec) in page.chunks_mut(16).enumerate() {
                        let v = base.wrapping_add(i as u32).to_le_bytes();
                        let n = rec.len().min(4);
                        rec[..n].copy_from_slice(&v[..n]);
                        if rec.len() > 8 {
                            rec[8] = self.rng.gen();
                        }
                    }
                }
                _ => {
                    let used = self.rng.gen_range(0..page.len());
                    self.rng.fill_bytes(&mut page[..used / 4]);
                }
            }
        }
        out
    }

    /// A random integer in `range`.
    pub fn range(&mut self, range: std::ops::Range<u64>) -> u64 {
        self.rng.gen_range(range)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        self.rng.fill_bytes(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::Gen;

    #[test]
    fn same_seed_same_bytes() {
        assert_eq!(Gen::new(7).text(10_000), Gen::new(7).text(10_000));
        assert_eq!(Gen::new(7).binary(10_000), Gen::new(7).binary(10_000));
        assert_ne!(Gen::new(7).binary(10_000), Gen::new(8).binary(10_000));
    }

    #[test]
    fn text_compresses_and_binary_partly() {
        let text = Gen::new(1).text(1 << 20);
        let bin = Gen::new(1).binary(1 << 20);
        let t = zstd::bulk::compress(&text, 3).expect("zstd").len();
        let b = zstd::bulk::compress(&bin, 3).expect("zstd").len();
        assert!(t * 2 < text.len(), "text compressed to {t}");
        assert!(
            b < bin.len() && b * 3 > bin.len(),
            "binary compressed to {b}"
        );
    }
}
