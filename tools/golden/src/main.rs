//! `cairn-golden OUT_DIR NAME`: writes one golden repository into OUT_DIR
//! (normally `testdata/repos`), replacing the old one: `v2`, or
//! `v1-damage-recorded` (from the `v1-flipped-byte` there). The other `v1`
//! repositories are the samples of format version 1, which today's code no
//! longer writes: they are never regenerated.

use anyhow::{bail, Result};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (out, only) = match args.as_slice() {
        [out, only]
            if only == cairn_golden::repos::V1_DAMAGE_RECORDED
                || only == cairn_golden::repos::V2 =>
        {
            (out, only)
        }
        _ => bail!(
            "usage: cairn-golden OUT_DIR {}|{}   (e.g. cargo run -p cairn-golden -- testdata/repos v2)\n\
             rewrites that repository ({} from the v1-flipped-byte in OUT_DIR); the other v1 \
             repositories are samples of format version 1, which today's code does not write",
            cairn_golden::repos::V2,
            cairn_golden::repos::V1_DAMAGE_RECORDED,
            cairn_golden::repos::V1_DAMAGE_RECORDED
        ),
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let written = if only == cairn_golden::repos::V2 {
        cairn_golden::repos::write_v2(&out)?
    } else {
        cairn_golden::repos::write_damage_recorded(&out)?
    };
    println!("wrote {}", written.display());
    Ok(())
}
