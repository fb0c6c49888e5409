//! Writes the golden repositories: `v1` (two snapshots of the golden tree)
//! and its deliberately broken copies, each damaged in one known way.
//!
//! The damaged object of each variant is whatever differs from `v1`, so a
//! test finds it by comparing the two directories; nothing else records it.

use crate::fixture::{golden_tree, golden_update};
use crate::testkit;
use cairn_core::backup::{backup, BackupOptions};
use cairn_core::browse::{resolve, Resolved};
use cairn_core::format::tree::Payload;
use cairn_core::{InitOptions, Repository, SnapshotFilter};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The password of every golden repository.
pub const PASSWORD: &str = "cairn-golden";
/// Host and source recorded in the golden snapshots.
pub const SOURCE: &str = "golden";
/// Tag of the snapshot of [`golden_tree`].
pub const FIRST_TAG: &str = "first";
/// Tag of the snapshot of the tree after [`golden_update`].
pub const SECOND_TAG: &str = "second";
/// The file whose blobs the damaged variants break.
pub const DAMAGED_FILE: &str = "data/random.bin";

/// The intact repository.
pub const V1: &str = "v1";
/// `v1` without the data pack holding the first chunk of [`DAMAGED_FILE`].
pub const V1_MISSING_PACK: &str = "v1-missing-pack";
/// `v1` without the index segments the second backup wrote.
pub const V1_MISSING_INDEX: &str = "v1-missing-index";
/// `v1` with one byte flipped inside the first data blob of [`DAMAGED_FILE`].
pub const V1_FLIPPED_BYTE: &str = "v1-flipped-byte";
/// `v1-flipped-byte` after `check --read-data`: one `damage/` record names
/// the damaged copy.
pub const V1_DAMAGE_RECORDED: &str = "v1-damage-recorded";
/// The same two snapshots as `v1`, written with version 2 packs and index
/// segments (small files in bundles, 2026-12-08).
pub const V2: &str = "v2";

/// Why writing the golden repositories failed.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] cairn_core::Error),
    /// The storage could not be opened.
    #[error(transparent)]
    Storage(#[from] cairn_storage::StorageError),
    /// The repository does not look as the tool made it.
    #[error("unexpected golden repository: {0}")]
    Unexpected(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> GoldenError + '_ {
    move |source| GoldenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The options the golden repositories are created with: a fast KDF (the
/// password is public anyway), small chunks and packs so the repository
/// stays a few hundred KiB yet has list blobs and several packs.
pub fn init_options() -> InitOptions {
    InitOptions {
        chunk_sizes: (512, 2048, 8192),
        ..testkit::init_options((64 << 10, 16 << 10))
    }
}

/// Opens a golden repository (at a local path) with an in-memory cache.
pub fn open(path: &Path) -> Result<Repository, GoldenError> {
    testkit::open_at(&path.to_string_lossy(), PASSWORD)
}

fn list_names(dir: &Path) -> Result<BTreeSet<String>, GoldenError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .map_err(io(dir))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(io(dir)(e)),
    }
}

fn snapshot_of(repo: &Repository, dir: &Path, tag: &str) -> Result<(), GoldenError> {
    backup(
        repo,
        &BackupOptions {
            paths: vec![dir.to_path_buf()],
            host: Some(SOURCE.into()),
            source: Some(SOURCE.into()),
            tags: vec![tag.into()],
            workers: 1,
            uploaders: 1,
            ..Default::default()
        },
    )?;
    Ok(())
}

/// Copies a directory tree of plain files and directories.
pub fn copy_dir(from: &Path, to: &Path) -> Result<(), GoldenError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for e in std::fs::read_dir(from).map_err(io(from))? {
        let e = e.map_err(io(from))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().map_err(io(&src))?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    Ok(())
}

/// Where the first stored chunk of [`DAMAGED_FILE`] in the first snapshot
/// lives: (pack object path, offset of the blob in the pack).
pub fn damaged_blob(repo: &Repository) -> Result<(String, u64), GoldenError> {
    let filter = SnapshotFilter {
        tags: vec![FIRST_TAG.into()],
        ..Default::default()
    };
    let (_, snap) = repo.find_snapshot("latest", &filter)?;
    let Resolved::Node(node) = resolve(repo, &snap.tree, Path::new(DAMAGED_FILE))? else {
        return Err(GoldenError::Unexpected(format!(
            "{DAMAGED_FILE} is the root"
        )));
    };
    let Payload::File(content) = &node.payload else {
        return Err(GoldenError::Unexpected(format!(
            "{DAMAGED_FILE} is not a file"
        )));
    };
    let chunk = repo
        .chunk_list(content)?
        .into_iter()
        .find(|c| !c.is_hole())
        .ok_or_else(|| GoldenError::Unexpected(format!("{DAMAGED_FILE} has no data")))?;
    let loc = repo
        .lookup(&chunk.id)?
        .ok_or_else(|| GoldenError::Unexpected("a chunk is not indexed".into()))?;
    Ok((loc.pack.path(), loc.offset as u64))
}

/// Writes the intact repository `name` under `out` (replacing an earlier
/// one): the two golden snapshots, as today's code writes them. Returns
/// the index segments the second backup wrote.
fn write_intact(out: &Path, name: &str) -> Result<Vec<String>, GoldenError> {
    let work = out.join(".golden-work");
    let _ = std::fs::remove_dir_all(&work);
    let tree = work.join("tree");
    std::fs::create_dir_all(&tree).map_err(io(&tree))?;
    golden_tree(&tree).map_err(io(&tree))?;
    let dir = out.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    let repo = testkit::init_at(&dir.to_string_lossy(), PASSWORD, &init_options())?;
    snapshot_of(&repo, &tree, FIRST_TAG)?;
    let first_segments = list_names(&dir.join("index"))?;
    golden_update(&tree).map_err(io(&tree))?;
    snapshot_of(&repo, &tree, SECOND_TAG)?;
    let second_segments: Vec<String> = list_names(&dir.join("index"))?
        .difference(&first_segments)
        .cloned()
        .collect();
    if second_segments.is_empty() {
        return Err(GoldenError::Unexpected(
            "the second backup wrote no index segment".into(),
        ));
    }
    drop(repo);
    let _ = std::fs::remove_dir_all(dir.join(".tmp"));
    // Empty once the init is done (git keeps no empty directory anyway).
    let _ = std::fs::remove_dir(dir.join("init"));
    std::fs::remove_dir_all(&work).map_err(io(&work))?;
    Ok(second_segments)
}

/// Writes `v2` under `out` (replacing an earlier one); returns its
/// directory. The `v1` repositories stay as they are: they are the samples
/// of the version 1 format.
pub fn write_v2(out: &Path) -> Result<PathBuf, GoldenError> {
    write_intact(out, V2)?;
    Ok(out.join(V2))
}

/// Writes `v1` and its broken variants under `out` (replacing earlier
/// ones) and returns the directories written. Today's code writes format
/// version 2: the committed `v1` repositories were written before it and
/// are not regenerated (the command line does not offer it).
pub fn write_repos(out: &Path) -> Result<Vec<PathBuf>, GoldenError> {
    for name in [V1_MISSING_PACK, V1_MISSING_INDEX, V1_FLIPPED_BYTE] {
        let dir = out.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
    }
    let second_segments = write_intact(out, V1)?;
    let v1 = out.join(V1);
    let (pack, offset) = damaged_blob(&open(&v1)?)?;
    let _ = std::fs::remove_dir_all(v1.join(".tmp"));

    let missing_pack = out.join(V1_MISSING_PACK);
    copy_dir(&v1, &missing_pack)?;
    let p = missing_pack.join(&pack);
    std::fs::remove_file(&p).map_err(io(&p))?;

    let missing_index = out.join(V1_MISSING_INDEX);
    copy_dir(&v1, &missing_index)?;
    for seg in &second_segments {
        let p = missing_index.join("index").join(seg);
        std::fs::remove_file(&p).map_err(io(&p))?;
    }

    let flipped = out.join(V1_FLIPPED_BYTE);
    copy_dir(&v1, &flipped)?;
    let p = flipped.join(&pack);
    let mut bytes = std::fs::read(&p).map_err(io(&p))?;
    // Past the 12-byte nonce: inside the ciphertext of the blob.
    let at = offset as usize + 20;
    if at >= bytes.len() {
        return Err(GoldenError::Unexpected(format!("{pack} is too short")));
    }
    bytes[at] ^= 0x01;
    std::fs::write(&p, bytes).map_err(io(&p))?;

    let recorded = write_damage_recorded(out)?;
    Ok(vec![v1, missing_pack, missing_index, flipped, recorded])
}

/// Writes `v1-damage-recorded` from the `v1-flipped-byte` under `out`:
/// a copy on which `check --read-data` recorded the damaged blob.
pub fn write_damage_recorded(out: &Path) -> Result<PathBuf, GoldenError> {
    let dir = out.join(V1_DAMAGE_RECORDED);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    copy_dir(&out.join(V1_FLIPPED_BYTE), &dir)?;
    let repo = open(&dir)?;
    let report = cairn_core::check::check(
        &repo,
        &cairn_core::check::CheckOptions {
            read_data: Some(cairn_core::check::DataSubset::All),
        },
    )?;
    if report.recorded == 0 {
        return Err(GoldenError::Unexpected(
            "check recorded no damage in v1-flipped-byte".into(),
        ));
    }
    drop(repo);
    let _ = std::fs::remove_dir_all(dir.join(".tmp"));
    Ok(dir)
}
