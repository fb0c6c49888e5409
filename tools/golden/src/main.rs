//! `cairn-golden OUT_DIR`: writes the golden repository `v1` and its broken
//! variants into OUT_DIR (normally `testdata/repos`), replacing old ones.

use anyhow::{bail, Result};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (out, only) = match args.as_slice() {
        [out] => (out, None),
        [out, only]
            if only == cairn_golden::repos::V1_DAMAGE_RECORDED
                || only == cairn_golden::repos::V2 =>
        {
            (out, Some(only))
        }
        _ => bail!(
            "usage: cairn-golden OUT_DIR [{}|{}]   (e.g. cargo run -p cairn-golden -- testdata/repos)\n\
             with a name, only that repository is rewritten ({} from the v1-flipped-byte in OUT_DIR)",
            cairn_golden::repos::V1_DAMAGE_RECORDED,
            cairn_golden::repos::V2,
            cairn_golden::repos::V1_DAMAGE_RECORDED
        ),
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let written = match only {
        Some(name) if name == cairn_golden::repos::V2 => {
            vec![cairn_golden::repos::write_v2(&out)?]
        }
        Some(_) => vec![cairn_golden::repos::write_damage_recorded(&out)?],
        None => cairn_golden::repos::write_repos(&out)?,
    };
    for dir in written {
        println!("wrote {}", dir.display());
    }
    Ok(())
}
