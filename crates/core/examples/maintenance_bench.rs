//! Benchmark helper for benches/maintenance.sh: `create DIR N` builds a
//! repository of N small data blobs (60% referenced by one snapshot, the
//! rest garbage, one pack half-live) through the library; `run DIR` runs
//! full maintenance with a zero window and prints the report.

use cairn_core::format::snapshot::{RawPath, Snapshot, Summary, SNAPSHOT_VERSION};
use cairn_core::format::tree::{
    encode_list, ChunkRef, Content, ListRef, Node, NodeType, Payload, Tree, LIST_CHUNKS_MAX,
};
use cairn_core::gc::GcOptions;
use cairn_core::maintenance::{self, MaintenanceOptions, Mode};
use cairn_core::packer::PackWriter;
use cairn_core::{BlobKind, InitOptions, OpenOptions, Repository};
use std::time::{Duration, Instant};

fn storage(dir: &str) -> cairn_storage::DynStorage {
    cairn_storage::open(dir).expect("open storage")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, dir) = (args[1].as_str(), args[2].as_str());
    let cache = std::path::PathBuf::from(format!("{dir}.cache"));
    let open = OpenOptions {
        cache_dir: Some(cache),
        tolerate_damage: false,
    };
    let t = Instant::now();
    match mode {
        "create" => {
            let n: u32 = args[3].parse().expect("blob count");
            let init = InitOptions {
                pack_sizes: (1 << 20, 1 << 20),
                ..Default::default()
            };
            let repo = Repository::init(storage(dir), "pw", &init, &open).expect("init");
            let writer = PackWriter::new(&repo, 2).unwrap();
            let mut refs = Vec::new();
            for i in 0..n {
                let data = format!("blob {i:010} {}", "x".repeat(40));
                let (id, _) = writer
                    .add_plain(BlobKind::Data, data.as_bytes())
                    .expect("add");
                if i < n / 10 * 6 {
                    refs.push(ChunkRef {
                        id,
                        len: data.len() as u32,
                    });
                }
            }
            let mut lists = Vec::new();
            for part in refs.chunks(LIST_CHUNKS_MAX) {
                let (id, _) = writer
                    .add_plain(BlobKind::List, &encode_list(part))
                    .expect("list");
                lists.push(ListRef {
                    id,
                    chunks: part.len() as u64,
                    bytes: part.iter().map(|c| c.len as u64).sum(),
                });
            }
            let node = Node {
                name: b"big".to_vec(),
                kind: NodeType::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
                ctime_ns: 0,
                size: lists.iter().map(|l| l.bytes).sum(),
                inode: 1,
                dev: 1,
                nlink: 1,
                rdev: 0,
                xattrs: vec![],
                payload: Payload::File(Content::Lists(lists)),
            };
            let (tree, _) = writer
                .add_plain(BlobKind::Tree, &Tree { nodes: vec![node] }.encode())
                .expect("tree");
            writer.finish().expect("finish");
            repo.save_snapshot(&Snapshot {
                version: SNAPSHOT_VERSION,
                time: chrono::Utc::now(),
                host: "bench".into(),
                source: "bench".into(),
                paths: vec![RawPath("/bench".into())],
                tags: vec![],
                tree,
                parent: None,
                complete: true,
                summary: Summary::default(),
                program_version: "bench".into(),
                excludes: vec![],
                hooks: vec![],
                damaged_root: None,
            })
            .expect("snapshot");
            println!("created {n} blobs in {:.1?}", t.elapsed());
        }
        "run" => {
            let repo = Repository::open(storage(dir), "pw", &open).expect("open");
            let opened = t.elapsed();
            let opts = MaintenanceOptions {
                mode: Mode::Full,
                gc: GcOptions {
                    safety_window: Duration::ZERO,
                    ..Default::default()
                },
            };
            let r = maintenance::run(&repo, &opts).expect("maintenance");
            println!(
                "open {opened:.1?}, full maintenance {:.1?}: {r:?}",
                t.elapsed() - opened
            );
        }
        _ => eprintln!("usage: maintenance_bench create DIR N | run DIR"),
    }
}
