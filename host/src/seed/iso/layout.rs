//! Where everything goes on the image, decided from names, sizes and modes alone (pure):
//!
//! ```text
//! 0-15  system area (zero)      16 primary descriptor   17 Joliet descriptor   18 terminator
//! path tables (primary L, M; Joliet L, M), primary directories, the Rock Ridge ER area,
//! Joliet directories, then each file's data in the order given, sector-aligned.
//! ```
//!
//! Metadata comes first so the image is written front to back in one pass: the header as
//! one buffer, then the files, each straight from where it is (see `super::write_iso`).

use super::IsoError;
use super::names::{self, Level1};
use super::records::{self, Descriptor, PathEntry, SECTOR, Stamp, TreeLocation, susp};

const FIRST_DESCRIPTOR: u32 = 16;
const DIR_MODE: u32 = 0o040_755;
const S_IFREG: u32 = 0o100_000;

/// One file to place: its `/`-separated path (at most one folder deep), size and mode.
#[derive(Debug, Clone, Copy)]
pub struct FileSpec<'a> {
    pub path: &'a str,
    pub len: u64,
    pub mode: u32,
}

/// The decided layout.
#[derive(Debug)]
pub struct Plan {
    /// Every sector before the first file's data.
    pub header: Vec<u8>,
    /// First sector of each file's data, in the order the files were given.
    pub extents: Vec<u32>,
    /// Size of the whole image in sectors.
    pub sectors: u32,
}

struct Node {
    name: String,
    level1: Level1,
    joliet: Vec<u8>,
    kind: Kind,
}

enum Kind {
    /// Index into the caller's file list.
    File(usize),
    /// Index into `Tree::dirs`.
    Dir(usize),
}

/// The directory tree; `dirs[0]` is the root, every other directory is its child.
struct Tree {
    dirs: Vec<Vec<Node>>,
}

fn sectors(bytes: u64) -> u32 {
    bytes.div_ceil(SECTOR as u64) as u32
}

/// Decide the layout of an image holding `files` under volume label `volume_id`.
pub fn plan(files: &[FileSpec<'_>], volume_id: &str, stamp: &Stamp) -> Result<Plan, IsoError> {
    let tree = build_tree(files)?;
    let tables = PathTables::new(&tree);
    // Sizes first (a record's length never depends on where things are), then places.
    let sizes = DirSizes::of(&tree, files, stamp);
    let mut places = Places::allocate(&tables, &sizes, files);
    let mut header = Header(vec![0u8; places.data_start as usize * SECTOR]);
    header.put_path_tables(&tables, &places);
    let roots = header.put_directories(&tree, &mut places.locs, sizes.joliet, files, stamp);
    header.put_descriptors(volume_id, &places, roots, stamp);
    Ok(Plan { header: header.0, extents: places.locs.extents, sectors: places.total })
}

#[derive(Default)]
struct Locations {
    primary: Vec<u32>,
    joliet: Vec<u32>,
    /// Sizes in sectors of the tree being written (primary or Joliet).
    sizes: Vec<u32>,
    er_area: u32,
    extents: Vec<u32>,
}

impl Tree {
    /// The root's entry for directory `d`: every other directory is the root's child.
    fn child_dir(&self, d: usize) -> &Node {
        self.dirs[0].iter().find(|n| matches!(n.kind, Kind::Dir(i) if i == d)).expect("child")
    }
}

/// Directory numbers in each path table: root first, then its children by identifier.
struct PathTables<'t> {
    tree: &'t Tree,
    primary: Vec<usize>,
    joliet: Vec<usize>,
}

impl PathTables<'_> {
    fn new(tree: &Tree) -> PathTables<'_> {
        let ndirs = tree.dirs.len();
        let mut primary: Vec<usize> = (1..ndirs).collect();
        let mut joliet: Vec<usize> = (1..ndirs).collect();
        primary.sort_by(|&a, &b| names::level1_order(&tree.child_dir(a).level1, &tree.child_dir(b).level1));
        joliet.sort_by(|&a, &b| names::joliet_order(&tree.child_dir(a).joliet, &tree.child_dir(b).joliet));
        primary.insert(0, 0);
        joliet.insert(0, 0);
        PathTables { tree, primary, joliet }
    }

    /// The primary or Joliet table, type L or (`big_endian`) M, with the directories at
    /// `locs` (none yet while only its length is wanted).
    fn table(&self, joliet: bool, locs: &[u32], big_endian: bool) -> Vec<u8> {
        let order = if joliet { &self.joliet } else { &self.primary };
        let entries: Vec<(Vec<u8>, u32)> = order
            .iter()
            .map(|&d| {
                let id = match d {
                    0 => vec![0],
                    _ if joliet => self.tree.child_dir(d).joliet.clone(),
                    _ => self.tree.child_dir(d).level1.id(true),
                };
                (id, locs.get(d).copied().unwrap_or(0))
            })
            .collect();
        let e: Vec<PathEntry<'_>> =
            entries.iter().map(|(id, extent)| PathEntry { id, extent: *extent, parent: 1 }).collect();
        records::path_table(&e, big_endian)
    }

    fn len(&self, joliet: bool) -> u64 {
        self.table(joliet, &[], false).len() as u64
    }
}

/// Each directory's size in sectors, in the primary and in the Joliet tree.
struct DirSizes {
    primary: Vec<u32>,
    joliet: Vec<u32>,
}

impl DirSizes {
    fn of(tree: &Tree, files: &[FileSpec<'_>], stamp: &Stamp) -> DirSizes {
        let ndirs = tree.dirs.len();
        let zero = Locations {
            primary: vec![0; ndirs],
            joliet: vec![0; ndirs],
            sizes: vec![0; ndirs],
            ..Locations::default()
        };
        DirSizes {
            primary: (0..ndirs).map(|d| sectors(primary_dir(tree, d, &zero, files, stamp).len() as u64)).collect(),
            joliet: (0..ndirs).map(|d| sectors(joliet_dir(tree, d, &zero, files, stamp).len() as u64)).collect(),
        }
    }
}

/// Where a tree's path tables are: its type L and type M copies, and their length in bytes.
struct TablePlace {
    len: u64,
    l: u32,
    m: u32,
}

/// The first sector of everything, in the order laid out after the descriptors.
struct Places {
    primary_table: TablePlace,
    joliet_table: TablePlace,
    /// With the primary tree's directory sizes.
    locs: Locations,
    data_start: u32,
    total: u32,
}

impl Places {
    fn allocate(tables: &PathTables<'_>, sizes: &DirSizes, files: &[FileSpec<'_>]) -> Places {
        let mut next = FIRST_DESCRIPTOR + 3;
        let mut take = |n: u32| {
            let at = next;
            next += n;
            at
        };
        let (primary_len, joliet_len) = (tables.len(false), tables.len(true));
        let (pl, pm) = (take(sectors(primary_len)), take(sectors(primary_len)));
        let (jl, jm) = (take(sectors(joliet_len)), take(sectors(joliet_len)));
        let primary: Vec<u32> = sizes.primary.iter().map(|&s| take(s)).collect();
        let er_area = take(1);
        let joliet: Vec<u32> = sizes.joliet.iter().map(|&s| take(s)).collect();
        let data_start = take(0);
        let extents: Vec<u32> = files.iter().map(|f| take(sectors(f.len))).collect();
        let total = take(0);
        Places {
            primary_table: TablePlace { len: primary_len, l: pl, m: pm },
            joliet_table: TablePlace { len: joliet_len, l: jl, m: jm },
            locs: Locations { primary, joliet, sizes: sizes.primary.clone(), er_area, extents },
            data_start,
            total,
        }
    }
}

/// Every sector before the first file's data, filled in place by place.
struct Header(Vec<u8>);

impl Header {
    fn put(&mut self, sector: u32, bytes: &[u8]) {
        let at = sector as usize * SECTOR;
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn put_path_tables(&mut self, tables: &PathTables<'_>, places: &Places) {
        let (p, j) = (&places.primary_table, &places.joliet_table);
        for (big_endian, at) in [(false, p.l), (true, p.m)] {
            self.put(at, &tables.table(false, &places.locs.primary, big_endian));
        }
        for (big_endian, at) in [(false, j.l), (true, j.m)] {
            self.put(at, &tables.table(true, &places.locs.joliet, big_endian));
        }
    }

    /// Both trees' directories and the Rock Ridge ER area; returns the primary and the
    /// Joliet root records, for the descriptors. `locs` ends with the Joliet sizes.
    fn put_directories(
        &mut self,
        tree: &Tree,
        locs: &mut Locations,
        joliet_sizes: Vec<u32>,
        files: &[FileSpec<'_>],
        stamp: &Stamp,
    ) -> [Vec<u8>; 2] {
        let ndirs = tree.dirs.len();
        for d in 0..ndirs {
            self.put(locs.primary[d], &primary_dir(tree, d, locs, files, stamp));
        }
        self.put(locs.er_area, &susp::er());
        let primary_root = records::dir_record(&[0], locs.primary[0], locs.sizes[0] * SECTOR as u32, true, stamp, &[]);
        locs.sizes = joliet_sizes;
        for d in 0..ndirs {
            self.put(locs.joliet[d], &joliet_dir(tree, d, locs, files, stamp));
        }
        let joliet_root = records::dir_record(&[0], locs.joliet[0], locs.sizes[0] * SECTOR as u32, true, stamp, &[]);
        [primary_root, joliet_root]
    }

    fn put_descriptors(&mut self, volume_id: &str, places: &Places, roots: [Vec<u8>; 2], stamp: &Stamp) {
        let [primary_root, joliet_root] = roots;
        let descriptors = [
            (Descriptor::Primary, &places.primary_table, primary_root),
            (Descriptor::Joliet, &places.joliet_table, joliet_root),
        ];
        for (i, (kind, table, root)) in descriptors.into_iter().enumerate() {
            let where_ = TreeLocation {
                path_table_size: table.len as u32,
                l_table: table.l,
                m_table: table.m,
                root_record: root,
            };
            self.put(
                FIRST_DESCRIPTOR + i as u32,
                &records::volume_descriptor(kind, volume_id, places.total, &where_, stamp),
            );
        }
        self.put(FIRST_DESCRIPTOR + 2, &records::terminator());
    }
}

fn build_tree(files: &[FileSpec<'_>]) -> Result<Tree, IsoError> {
    let mut names: Vec<Vec<(String, Kind)>> = vec![Vec::new()];
    for (index, f) in files.iter().enumerate() {
        if f.len > u64::from(u32::MAX) {
            return Err(IsoError::BadName { name: f.path.to_string(), reason: "files on the seed are under 4 GiB" });
        }
        let parts: Vec<&str> = f.path.split('/').collect();
        for p in &parts {
            names::check_name(p)?;
        }
        let (dir, name) = match parts.as_slice() {
            [name] => (0, *name),
            [dir, name] => {
                let existing = names[0].iter().find_map(|(n, k)| match k {
                    Kind::Dir(i) if n == dir => Some(*i),
                    _ => None,
                });
                let d = match existing {
                    Some(d) => d,
                    None => {
                        names.push(Vec::new());
                        let d = names.len() - 1;
                        claim(&mut names[0], dir, Kind::Dir(d), f.path)?;
                        d
                    }
                };
                (d, *name)
            }
            _ => {
                return Err(IsoError::BadName {
                    name: f.path.to_string(),
                    reason: "the seed holds files at most one folder deep",
                });
            }
        };
        claim(&mut names[dir], name, Kind::File(index), f.path)?;
    }
    let dirs = names
        .into_iter()
        .map(|entries| {
            let input: Vec<(&str, bool)> =
                entries.iter().map(|(n, k)| (n.as_str(), matches!(k, Kind::Dir(_)))).collect();
            let level1 = names::level1_names(&input);
            entries
                .into_iter()
                .zip(level1)
                .map(|((name, kind), level1)| {
                    let joliet = names::joliet_id(&name);
                    Node { name, level1, joliet, kind }
                })
                .collect()
        })
        .collect();
    Ok(Tree { dirs })
}

fn claim(dir: &mut Vec<(String, Kind)>, name: &str, kind: Kind, path: &str) -> Result<(), IsoError> {
    if dir.iter().any(|(n, _)| n == name) {
        return Err(IsoError::BadName { name: path.to_string(), reason: "two files on the seed have this path" });
    }
    dir.push((name.to_string(), kind));
    Ok(())
}

fn child_dirs(tree: &Tree, d: usize) -> u32 {
    tree.dirs[d].iter().filter(|n| matches!(n.kind, Kind::Dir(_))).count() as u32
}

/// Pack records into sectors: a record never crosses a sector boundary (ECMA-119 §6.8.1.1).
fn pack(records: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(SECTOR);
    for r in records {
        if out.len() % SECTOR + r.len() > SECTOR {
            out.resize(out.len().next_multiple_of(SECTOR), 0);
        }
        out.extend_from_slice(&r);
    }
    out.resize(out.len().next_multiple_of(SECTOR), 0);
    out
}

/// A primary directory's records: `.` and `..`, then its entries in level 1 order, each
/// with Rock Ridge entries giving the real name, mode and times. The root's `.` also
/// announces SUSP (`SP`) and points at the `ER` entry saying Rock Ridge is in use.
fn primary_dir(tree: &Tree, d: usize, locs: &Locations, files: &[FileSpec<'_>], stamp: &Stamp) -> Vec<u8> {
    let dir_su = |dir: usize, root_dot: bool| {
        let mut su = Vec::new();
        if root_dot {
            su.extend(susp::sp());
        }
        su.extend(susp::rr(susp::RR_PX | susp::RR_TF));
        if root_dot {
            su.extend(susp::ce(locs.er_area, susp::er().len() as u32));
        }
        su.extend(susp::px(DIR_MODE, 2 + child_dirs(tree, dir)));
        su.extend(susp::tf(stamp));
        su
    };
    let size = |dir: usize| locs.sizes[dir] * SECTOR as u32;
    // Every directory is the root or one of its children.
    let parent = 0;
    let mut records = vec![
        records::dir_record(&[0], locs.primary[d], size(d), true, stamp, &dir_su(d, d == 0)),
        records::dir_record(&[1], locs.primary[parent], size(parent), true, stamp, &dir_su(parent, false)),
    ];
    let mut nodes: Vec<&Node> = tree.dirs[d].iter().collect();
    nodes.sort_by(|a, b| names::level1_order(&a.level1, &b.level1));
    for n in nodes {
        let mut su = susp::rr(susp::RR_PX | susp::RR_TF | susp::RR_NM);
        let rec = match n.kind {
            Kind::File(i) => {
                su.extend(susp::px(S_IFREG | (files[i].mode & 0o7777), 1));
                su.extend(susp::tf(stamp));
                su.extend(susp::nm(&n.name));
                records::dir_record(&n.level1.id(false), file_extent(locs, i), files[i].len as u32, false, stamp, &su)
            }
            Kind::Dir(sub) => {
                su.extend(susp::px(DIR_MODE, 2 + child_dirs(tree, sub)));
                su.extend(susp::tf(stamp));
                su.extend(susp::nm(&n.name));
                records::dir_record(&n.level1.id(true), locs.primary[sub], size(sub), true, stamp, &su)
            }
        };
        records.push(rec);
    }
    pack(records)
}

/// A Joliet directory: the same entries under their UCS-2 names, without Rock Ridge.
fn joliet_dir(tree: &Tree, d: usize, locs: &Locations, files: &[FileSpec<'_>], stamp: &Stamp) -> Vec<u8> {
    let size = |dir: usize| locs.sizes[dir] * SECTOR as u32;
    let mut records = vec![
        records::dir_record(&[0], locs.joliet[d], size(d), true, stamp, &[]),
        records::dir_record(&[1], locs.joliet[0], size(0), true, stamp, &[]),
    ];
    let mut nodes: Vec<&Node> = tree.dirs[d].iter().collect();
    nodes.sort_by(|a, b| names::joliet_order(&a.joliet, &b.joliet));
    for n in nodes {
        records.push(match n.kind {
            Kind::File(i) => {
                records::dir_record(&n.joliet, file_extent(locs, i), files[i].len as u32, false, stamp, &[])
            }
            Kind::Dir(sub) => records::dir_record(&n.joliet, locs.joliet[sub], size(sub), true, stamp, &[]),
        });
    }
    pack(records)
}

fn file_extent(locs: &Locations, i: usize) -> u32 {
    locs.extents.get(i).copied().unwrap_or(0)
}
