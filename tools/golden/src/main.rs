//! `cairn-golden OUT_DIR`: writes the golden repository `v1` and its broken
//! variants into OUT_DIR (normally `testdata/repos`), replacing old ones.

use anyhow::{bail, Result};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out] = args.as_slice() else {
        bail!("usage: cairn-golden OUT_DIR   (e.g. cargo run -p cairn-golden -- testdata/repos)");
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    for dir in cairn_golden::repos::write_repos(&out)? {
        println!("wrote {}", dir.display());
    }
    Ok(())
}
