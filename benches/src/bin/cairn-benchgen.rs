//! Generates the datasets of benches/compare.sh and benches/scale.sh.
//!
//! Usage:
//!   cairn-benchgen tree DIR FILES SEED        source-like tree of small text files
//!   cairn-benchgen bin DIR COUNT MIB SEED     COUNT binary files of MIB MiB each
//!   cairn-benchgen mutate DIR PERCENT BLOCK_KIB SEED
//!                                             rewrite PERCENT% of the BLOCK_KIB blocks
//!                                             of every file in DIR, in place
//!   cairn-benchgen tiny-tree DIR FILES        FILES files of a few unique bytes, 1000 per directory
//!   cairn-benchgen fake-index REPO BLOBS      add index segments naming BLOBS blobs of fake
//!                                             packs (lookups only; never read them); password
//!                                             from CAIRN_PASSWORD, cache from CAIRN_CACHE_DIR
//!                                             (none with CAIRN_BENCHGEN_NO_CACHE=1);
//!                                             with CAIRN_BENCHGEN_PACKS=1 an empty object is
//!                                             stored for each fake pack (so maintenance finds
//!                                             them present, not missing); with
//!                                             CAIRN_BENCHGEN_LIVE=PERCENT a snapshot references
//!                                             every blob of PERCENT% of the fake packs through
//!                                             real chunk lists (maintenance walks them)

use anyhow::{bail, Context, Result};
use cairn_benches::data::Gen;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    args.get(i)
        .with_context(|| format!("missing {what}"))?
        .parse()
        .with_context(|| format!("bad {what}"))
}

/// Directories nest up to 7 levels, up to 6 subdirectories and ~25 files
/// each; file sizes are log-uniform between 100 B and 64 KiB (mean ~11 KiB).
fn tree(root: &Path, files: u64, seed: u64) -> Result<()> {
    let mut gen = Gen::new(seed);
    let mut dirs: Vec<(PathBuf, u32)> = vec![(root.to_path_buf(), 0)];
    fs::create_dir_all(root)?;
    let mut made = 0u64;
    let mut next_dir = 0usize;
    while made < files {
        let (dir, depth) = dirs[next_dir % dirs.len()].clone();
        next_dir += 1;
        if depth < 7 {
            for s in 0..gen.range(1..7) {
                let sub = dir.join(format!("mod_{depth}_{s}_{}", gen.range(0..1000)));
                if fs::create_dir(&sub).is_ok() {
                    dirs.push((sub, depth + 1));
                }
            }
        }
        for _ in 0..gen.range(5..45) {
            if made >= files {
                break;
            }
            let exp = gen.range(0..1000) as f64 / 1000.0;
            let size = (100.0 * (65536.0f64 / 100.0).powf(exp)) as usize;
            let ext = ["rs", "go", "c", "h", "py", "md", "txt", "json"][gen.range(0..8) as usize];
            let path = dir.join(format!("file_{made}.{ext}"));
            fs::write(&path, gen.text(size))?;
            made += 1;
        }
    }
    Ok(())
}

fn binaries(root: &Path, count: u64, mib: u64, seed: u64) -> Result<()> {
    fs::create_dir_all(root)?;
    for i in 0..count {
        let mut gen = Gen::new(seed.wrapping_mul(1000).wrapping_add(i));
        let mut w =
            BufWriter::with_capacity(1 << 20, File::create(root.join(format!("disk{i}.img")))?);
        for _ in 0..mib {
            w.write_all(&gen.binary(1 << 20))?;
        }
        w.flush()?;
    }
    Ok(())
}

fn mutate(root: &Path, percent: f64, block_kib: u64, seed: u64) -> Result<()> {
    let mut gen = Gen::new(seed);
    let block = block_kib << 10;
    let mut entries: Vec<_> = fs::read_dir(root)?.collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if !e.file_type()?.is_file() {
            continue;
        }
        let f = fs::OpenOptions::new().write(true).open(e.path())?;
        let blocks = f.metadata()?.len() / block;
        let n = ((blocks as f64 * percent / 100.0).ceil() as u64).min(blocks);
        let mut buf = vec![0u8; block as usize];
        for _ in 0..n {
            let b = gen.range(0..blocks.max(1));
            gen.fill(&mut buf);
            f.write_all_at(&buf, b * block)?;
        }
    }
    Ok(())
}

fn tiny_tree(root: &Path, files: u64) -> Result<()> {
    for i in 0..files {
        let dir = root.join(format!("d{:05}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir_all(&dir)?;
        }
        fs::write(dir.join(format!("f{i}")), format!("{i}\n"))?;
    }
    Ok(())
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
}

fn fake_index(repo: &str, blobs: u64) -> Result<()> {
    use cairn_core::format::index::{IndexSegment, IndexedPack};
    use cairn_core::format::pack::BlobEntry;
    use cairn_core::format::Id;
    use cairn_core::{BlobId, BlobKind, OpenOptions, PackId, Repository};
    let storage = cairn_storage::open_with(repo, &cairn_storage::StorageOptions::default())?;
    let password = std::env::var("CAIRN_PASSWORD").context("set CAIRN_PASSWORD")?;
    let open = OpenOptions {
        cache_dir: OpenOptions::default_cache_dir(),
        tolerate_damage: false,
    };
    let repo = Repository::open(storage, &password, &open)?;
    // Without the cache, only the segments are written (at 100M blobs the
    // cache would be ~13 GB of SQLite and most of the time).
    let no_cache = env_flag("CAIRN_BENCHGEN_NO_CACHE");
    let store_packs = env_flag("CAIRN_BENCHGEN_PACKS");
    let live_percent: u64 = match std::env::var("CAIRN_BENCHGEN_LIVE") {
        Ok(v) => v.parse().context("CAIRN_BENCHGEN_LIVE: a percentage")?,
        Err(_) => 0,
    };
    if live_percent > 100 {
        bail!("CAIRN_BENCHGEN_LIVE={live_percent}: a percentage, 0 to 100");
    }
    let mut live = LiveTree::new(&repo)?;
    const PER_PACK: u64 = 10_000;
    const PER_SEGMENT: u64 = 100;
    let mut i = 0u64;
    let mut pack_no = 0u64;
    while i < blobs {
        let mut packs = Vec::new();
        while packs.len() < PER_SEGMENT as usize && i < blobs {
            let first = i;
            let entries: Vec<BlobEntry> = (0..PER_PACK.min(blobs - i))
                .map(|k| BlobEntry {
                    id: BlobId(Id::hash(format!("fake blob {}", first + k).as_bytes())),
                    kind: BlobKind::Data,
                    offset: (k * 1000) as u32,
                    stored_len: 1000,
                    raw_len: 1000,
                    inner: None,
                })
                .collect();
            i += entries.len() as u64;
            let id = PackId(Id::hash(format!("fake pack {first}").as_bytes()));
            if store_packs {
                repo.storage()
                    .write(&id.path(), bytes::Bytes::new())
                    .with_context(|| format!("storing empty fake pack {}", id.path()))?;
            }
            // Whole packs are live or dead: no fake pack is repacked (its
            // blobs cannot be read).
            if pack_no % 100 < live_percent {
                live.add_file(&entries)?;
            }
            pack_no += 1;
            packs.push(IndexedPack {
                id,
                len: PER_PACK * 1000,
                blobs: entries,
            });
        }
        let seg = IndexSegment {
            supersedes: Vec::new(),
            packs,
        };
        if no_cache {
            repo.objects()
                .save::<cairn_core::format::kinds::IndexSegments>(&seg)?;
        } else {
            repo.save_segment(&seg)?;
        }
    }
    live.finish()
}

/// The snapshot of CAIRN_BENCHGEN_LIVE: one file per live fake pack,
/// whose chunk lists (real list blobs in real packs) name its blobs,
/// 1000 files per directory.
struct LiveTree<'r> {
    repo: &'r cairn_core::Repository,
    writer: cairn_core::packer::PackWriter,
    files: Vec<cairn_core::format::tree::Node>,
    dirs: Vec<cairn_core::format::tree::Node>,
}

impl<'r> LiveTree<'r> {
    fn new(repo: &'r cairn_core::Repository) -> Result<Self> {
        Ok(Self {
            repo,
            writer: cairn_core::packer::PackWriter::new(repo, 2)?,
            files: Vec::new(),
            dirs: Vec::new(),
        })
    }

    /// Stores a blob without asking the index whether it exists (these
    /// are new, and a lookup would read the whole fake index).
    fn store(&self, kind: cairn_core::BlobKind, plain: &[u8]) -> Result<cairn_core::BlobId> {
        let (id, sealed) = self.repo.seal_blob(kind, plain);
        self.writer
            .add_sealed(kind, id, &sealed, plain.len() as u32)?;
        Ok(id)
    }

    fn node(
        name: String,
        kind: cairn_core::format::tree::NodeType,
        size: u64,
        payload: cairn_core::format::tree::Payload,
    ) -> cairn_core::format::tree::Node {
        cairn_core::format::tree::Node {
            name: name.into_bytes(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            size,
            inode: 0,
            dev: 0,
            nlink: 1,
            rdev: 0,
            xattrs: vec![],
            payload,
        }
    }

    fn add_file(&mut self, entries: &[cairn_core::format::pack::BlobEntry]) -> Result<()> {
        use cairn_core::format::tree::{
            encode_list, ChunkRef, Content, ListRef, NodeType, Payload, LIST_CHUNKS_MAX,
        };
        let refs: Vec<ChunkRef> = entries
            .iter()
            .map(|e| ChunkRef {
                id: e.id,
                len: e.raw_len,
            })
            .collect();
        let mut lists = Vec::new();
        for part in refs.chunks(LIST_CHUNKS_MAX) {
            let id = self.store(cairn_core::BlobKind::List, &encode_list(part))?;
            lists.push(ListRef {
                id,
                chunks: part.len() as u64,
                bytes: part.iter().map(|c| c.len as u64).sum(),
            });
        }
        let size = lists.iter().map(|l| l.bytes).sum();
        // Zero-padded: a tree's entries are sorted by name.
        let name = format!("f{:09}", self.dirs.len() * 1000 + self.files.len());
        self.files.push(Self::node(
            name,
            NodeType::File,
            size,
            Payload::File(Content::Lists(lists)),
        ));
        if self.files.len() == 1000 {
            self.close_dir()?;
        }
        Ok(())
    }

    fn close_dir(&mut self) -> Result<()> {
        use cairn_core::format::tree::{NodeType, Payload, Tree};
        let nodes = std::mem::take(&mut self.files);
        let tree = self.store(cairn_core::BlobKind::Tree, &Tree { nodes }.encode())?;
        let name = format!("d{:05}", self.dirs.len());
        self.dirs
            .push(Self::node(name, NodeType::Dir, 0, Payload::Dir(tree)));
        Ok(())
    }

    /// Writes the last directory, the root and the snapshot (nothing when
    /// no pack was live).
    fn finish(mut self) -> Result<()> {
        use cairn_core::format::snapshot::{RawPath, Snapshot, Summary, SNAPSHOT_VERSION};
        use cairn_core::format::tree::Tree;
        if !self.files.is_empty() {
            self.close_dir()?;
        }
        if self.dirs.is_empty() {
            self.writer.finish()?;
            return Ok(());
        }
        let nodes = std::mem::take(&mut self.dirs);
        let root = self.store(cairn_core::BlobKind::Tree, &Tree { nodes }.encode())?;
        self.writer.finish()?;
        self.repo.save_snapshot(&Snapshot {
            version: SNAPSHOT_VERSION,
            time: chrono::Utc::now(),
            host: "benchgen".into(),
            source: "fake-index".into(),
            paths: vec![RawPath("/fake".into())],
            tags: vec!["fake".into()],
            tree: root,
            parent: None,
            complete: true,
            summary: Summary::default(),
            program_version: "benchgen".into(),
            excludes: vec![],
            hooks: vec![],
            damaged_root: None,
        })?;
        Ok(())
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("");
    let dir = || -> Result<PathBuf> { Ok(PathBuf::from(args.get(1).context("missing DIR")?)) };
    match cmd {
        "tree" => tree(&dir()?, arg(&args, 2, "FILES")?, arg(&args, 3, "SEED")?),
        "bin" => binaries(
            &dir()?,
            arg(&args, 2, "COUNT")?,
            arg(&args, 3, "MIB")?,
            arg(&args, 4, "SEED")?,
        ),
        "mutate" => mutate(
            &dir()?,
            arg(&args, 2, "PERCENT")?,
            arg(&args, 3, "BLOCK_KIB")?,
            arg(&args, 4, "SEED")?,
        ),
        "tiny-tree" => tiny_tree(&dir()?, arg(&args, 2, "FILES")?),
        "fake-index" => fake_index(
            args.get(1).context("missing REPO")?,
            arg(&args, 2, "BLOBS")?,
        ),
        _ => bail!(
            "usage: cairn-benchgen tree|bin|mutate|tiny-tree|fake-index ... (see the source header)"
        ),
    }
}
