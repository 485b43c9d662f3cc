//! Which files a copy takes from its source: the source path resolved inside the source root,
//! wildcards, the source's own filters (a build context's `.dockerignore` and include list),
//! and the copy's include/exclude patterns. Shared by the copy and by the content checksum
//! that keys its cache, so both always see exactly the same set of files.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_frontend::dag::op::CopyAction;
use kiln_frontend::dockerignore::{DockerIgnore, MatchInfo, PatternMatcher};
use rayon::prelude::*;
use rustix::fs::{AtFlags, OFlags, RawDir, CWD};

use super::owner::Owner;
use super::root::{clean_absolute, clean_components, join_names, resolve_in_root};
use super::stat::Stat;
use super::FileOpError;

/// A directory files are copied from, with the filters that decide which of its files exist.
///
/// For a build context, `exclude` is the `.dockerignore` (files it excludes do not exist for
/// COPY, ADD or the checksum) and the owner is reset to 0:0, as BuildKit's context transfer
/// does. For a stage or image snapshot there is no filter and owners are kept.
#[derive(Debug, Clone)]
pub struct SourceRoot {
    dir: PathBuf,
    include: Option<Arc<PatternMatcher>>,
    exclude: Option<Arc<PatternMatcher>>,
    owner_override: Option<Owner>,
}

impl SourceRoot {
    /// A plain directory: every file exists, owners are the files' own.
    pub fn new(dir: impl Into<PathBuf>) -> SourceRoot {
        SourceRoot {
            dir: dir.into(),
            include: None,
            exclude: None,
            owner_override: None,
        }
    }

    /// A build context directory as BuildKit's local source sees it: only paths matching
    /// `include_patterns` (all when empty), minus those matching `exclude_patterns` (the
    /// `.dockerignore` lines, `!` kept), every file owned by 0:0.
    pub fn build_context(
        dir: impl Into<PathBuf>,
        include_patterns: &[String],
        exclude_patterns: &[String],
    ) -> Result<SourceRoot, FileOpError> {
        let mut root = SourceRoot::new(dir).with_owner_override(0, 0);
        if !include_patterns.is_empty() {
            root.include = Some(Arc::new(PatternMatcher::new(include_patterns)?));
        }
        if !exclude_patterns.is_empty() {
            root.exclude = Some(Arc::new(PatternMatcher::new(exclude_patterns)?));
        }
        Ok(root)
    }

    /// A build context with its `.dockerignore` (read from `<dir>/.dockerignore` when present).
    pub fn build_context_with_dockerignore(
        dir: impl Into<PathBuf>,
    ) -> Result<SourceRoot, FileOpError> {
        let dir = dir.into();
        let ignore_path = dir.join(".dockerignore");
        let patterns = match std::fs::read(&ignore_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                DockerIgnore::parse(&text)
                    .map_err(|source| FileOpError::DockerIgnore { source })?
                    .patterns()
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(FileOpError::io("reading", ".dockerignore", error)),
        };
        SourceRoot::build_context(dir, &[], &patterns)
    }

    /// Sets the exclude filter from a parsed `.dockerignore`.
    pub fn with_dockerignore(mut self, ignore: &DockerIgnore) -> SourceRoot {
        self.exclude = (!ignore.matcher().is_empty()).then(|| Arc::new(ignore.matcher().clone()));
        self
    }

    /// Reports every file as owned by `uid:gid` (the build context: 0:0).
    pub fn with_owner_override(mut self, uid: u32, gid: u32) -> SourceRoot {
        self.owner_override = Some(Owner { uid, gid });
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The owner every file is reported with, if files' own owners are not used.
    pub fn owner_override(&self) -> Option<Owner> {
        self.owner_override
    }

    /// The owner a file of this source is copied (and checksummed) with.
    pub(crate) fn effective_owner(&self, metadata: &Stat) -> Owner {
        self.owner_override.unwrap_or(Owner {
            uid: metadata.uid(),
            gid: metadata.gid(),
        })
    }

    fn has_filters(&self) -> bool {
        self.include.is_some() || self.exclude.is_some()
    }
}

/// One file or directory taken by a copy.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Relative to the match (empty for the match itself).
    pub rel: PathBuf,
    /// `lstat` of the file.
    pub metadata: Stat,
    /// False for a directory that is only there as the parent of selected entries (created,
    /// but not itself matched by the patterns).
    pub selected: bool,
}

/// One source path of a copy (one wildcard match) and everything it takes.
#[derive(Debug, Clone)]
pub(crate) struct Selection {
    /// The source path as matched, cleaned and absolute (unresolved: its last name names the
    /// destination).
    pub source_path: String,
    /// The path inside the source root the files are read from (links followed as the copy
    /// follows them), relative to the root.
    pub resolved: PathBuf,
    /// The match itself first, then its contents, parents before children, names sorted: in
    /// runs as the walk made them (one directory's entries each), never moved into one list.
    segments: Vec<Vec<Entry>>,
}

impl Selection {
    /// Every entry, in walk order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.segments.iter().flatten()
    }

    /// The entries in runs (walk order when concatenated).
    pub fn segments(&self) -> &[Vec<Entry>] {
        &self.segments
    }

    /// The match itself.
    pub fn first(&self) -> Option<&Entry> {
        self.segments.first().and_then(|segment| segment.first())
    }

    /// Absolute on-disk path of an entry.
    pub fn entry_path(&self, source: &SourceRoot, entry: &Entry) -> PathBuf {
        if entry.rel.as_os_str().is_empty() {
            source.dir.join(&self.resolved)
        } else {
            source.dir.join(&self.resolved).join(&entry.rel)
        }
    }

    /// Path of an entry relative to the source root (the checksum cache's key).
    pub fn entry_root_relative(&self, entry: &Entry) -> PathBuf {
        let mut path = Vec::new();
        self.write_root_relative(entry, &mut path);
        PathBuf::from(std::ffi::OsString::from_vec(path))
    }

    /// [`entry_root_relative`](Self::entry_root_relative) written into `out` (cleared first),
    /// with no allocation once `out` is large enough.
    pub fn write_root_relative(&self, entry: &Entry, out: &mut Vec<u8>) {
        out.clear();
        let resolved = self.resolved.as_os_str().as_bytes();
        let rel = entry.rel.as_os_str().as_bytes();
        out.extend_from_slice(resolved);
        if !rel.is_empty() {
            if !resolved.is_empty() && !resolved.ends_with(b"/") {
                out.push(b'/');
            }
            out.extend_from_slice(rel);
        }
    }
}

/// What one copy action takes from one source. Empty when a wildcard matched nothing and
/// that is allowed.
pub(crate) fn select_copy(
    source: &SourceRoot,
    action: &CopyAction,
) -> Result<Vec<Selection>, FileOpError> {
    let copy_include = compile(&action.include_patterns)?;
    let copy_exclude = compile(&action.exclude_patterns)?;
    let filters = Filters {
        context_include: source.include.as_deref(),
        context_exclude: source.exclude.as_deref(),
        copy_include: copy_include.as_ref(),
        copy_exclude: copy_exclude.as_ref(),
    };
    let source_path = clean_absolute(&action.source_path);
    let matches: Vec<String> = if action.allow_wildcard && contains_wildcards(&source_path) {
        let found = resolve_wildcards(source, &filters, &source_path, action.follow_symlinks)?;
        if found.is_empty() {
            if action.allow_empty_wildcard {
                return Ok(Vec::new());
            }
            return Err(FileOpError::NoMatch {
                pattern: action.source_path.clone(),
            });
        }
        found
    } else {
        vec![source_path]
    };
    let mut selections = Vec::with_capacity(matches.len());
    for matched in matches {
        selections.push(select_path(
            source,
            &filters,
            &matched,
            action.follow_symlinks,
        )?);
    }
    check_required_paths(&selections, &action.required_paths)?;
    Ok(selections)
}

/// What a bind mount of `path` inside the source takes (everything below it, the source's
/// filters applied).
pub(crate) fn select_path_only(
    source: &SourceRoot,
    path: &str,
    follow_symlinks: bool,
) -> Result<Selection, FileOpError> {
    let filters = Filters {
        context_include: source.include.as_deref(),
        context_exclude: source.exclude.as_deref(),
        copy_include: None,
        copy_exclude: None,
    };
    select_path(source, &filters, &clean_absolute(path), follow_symlinks)
}

fn compile(patterns: &[String]) -> Result<Option<PatternMatcher>, FileOpError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    Ok(Some(PatternMatcher::new(patterns)?))
}

/// `--parents` without wildcards: each required path must be (a prefix of) a taken path.
fn check_required_paths(selections: &[Selection], required: &[String]) -> Result<(), FileOpError> {
    for required_path in required {
        let required_clean = clean_absolute(required_path);
        let found = selections.iter().any(|selection| {
            selection.entries().any(|entry| {
                let mut full = selection.source_path.clone();
                if !entry.rel.as_os_str().is_empty() {
                    if !full.ends_with('/') {
                        full.push('/');
                    }
                    full.push_str(&entry.rel.to_string_lossy());
                }
                full.starts_with(&required_clean)
            })
        });
        if !found {
            return Err(FileOpError::NotFound {
                path: required_path.clone(),
            });
        }
    }
    Ok(())
}

/// Resolves one (non-wildcard) source path and walks it.
fn select_path(
    source: &SourceRoot,
    filters: &Filters<'_>,
    source_path: &str,
    follow_symlinks: bool,
) -> Result<Selection, FileOpError> {
    let not_found = || FileOpError::NotFound {
        path: source_path.to_string(),
    };
    let resolved =
        resolve_in_root(&source.dir, source_path.as_bytes(), follow_symlinks).map_err(|error| {
            match error {
                super::root::ResolveError::Io(io_error)
                    if io_error.kind() == io::ErrorKind::NotFound
                        || io_error.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    not_found()
                }
                other => FileOpError::from_resolve(other, source_path),
            }
        })?;
    let absolute = source.dir.join(&resolved);
    let metadata = match std::fs::symlink_metadata(&absolute) {
        Ok(metadata) => metadata,
        Err(error)
            if error.kind() == io::ErrorKind::NotFound
                || error.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            return Err(not_found())
        }
        Err(error) => return Err(FileOpError::io("reading", source_path, error)),
    };
    let context_rel = context_relative(&resolved);
    // A path reached through a symlink is taken whole even if the source's include patterns
    // name only the link: BuildKit sends the targets of followed links along with the include
    // paths (fsutil's FollowPaths). Excludes still apply to the real paths.
    let without_include;
    let filters = if filters.context_include.is_some()
        && context_rel != context_relative(Path::new(source_path.trim_start_matches('/')))
    {
        without_include = Filters {
            context_include: None,
            context_exclude: filters.context_exclude,
            copy_include: filters.copy_include,
            copy_exclude: filters.copy_exclude,
        };
        &without_include
    } else {
        filters
    };
    let mut selection = Selection {
        source_path: source_path.to_string(),
        resolved,
        segments: Vec::new(),
    };
    if source.has_filters() && context_rel != "." {
        // The match itself must exist in the filtered view of the source.
        let decision = filters.decide_context(&context_rel, metadata.is_dir());
        let visible = decision.selected
            || (metadata.is_dir()
                && decision.descend
                && has_visible_descendant(filters, &absolute, &context_rel)?);
        if !visible {
            return Err(not_found());
        }
    }
    let is_dir = metadata.is_dir();
    selection.segments.push(vec![Entry {
        rel: PathBuf::new(),
        metadata: Stat::from_metadata(&metadata),
        selected: true,
    }]);
    if is_dir {
        let directory = open_directory(CWD, &absolute, &absolute)?;
        let parent_info = FilterInfo::default();
        walk(
            filters,
            directory.as_fd(),
            &absolute,
            Path::new(""),
            &context_rel,
            &parent_info,
            &mut selection.segments,
        )?;
    }
    Ok(selection)
}

/// The root-relative path as the source's patterns see it (`.` for the root).
fn context_relative(resolved: &Path) -> String {
    let text = resolved.to_string_lossy();
    if text.is_empty() {
        ".".to_string()
    } else {
        text.into_owned()
    }
}

fn join_relative(dir: &str, name: &str) -> String {
    if dir == "." || dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The sorted names of a directory's entries, each with whether it is a directory (links
/// are not followed; the directory itself is opened by path).
fn read_sorted(dir: &Path) -> Result<Vec<(OsString, bool)>, FileOpError> {
    let directory = std::fs::File::open(dir)
        .map_err(|error| FileOpError::io("reading directory", dir.display(), error))?;
    let listing = Listing::read(directory.as_fd(), dir)?;
    let mut entries = Vec::with_capacity(listing.entries.len());
    for index in 0..listing.entries.len() {
        let (c_name, name) = listing.name(index);
        let is_dir = match listing.entries[index].2 {
            rustix::fs::FileType::Directory => true,
            // a file system that does not say: ask lstat (gone since listed: not a directory)
            rustix::fs::FileType::Unknown => {
                stat_at(directory.as_fd(), c_name).is_ok_and(|stat| stat.is_dir())
            }
            _ => false,
        };
        entries.push((std::ffi::OsStr::from_bytes(name).to_os_string(), is_dir));
    }
    Ok(entries)
}

/// Opens a directory of a walk (`name` inside `parent`; `shown` names it in errors). A
/// directory replaced by a link since it was listed is not followed.
fn open_directory(
    parent: BorrowedFd<'_>,
    name: impl rustix::path::Arg,
    shown: &Path,
) -> Result<OwnedFd, FileOpError> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|error| FileOpError::io("reading directory", shown.display(), error.into()))
}

/// A directory's entries: names (each with its NUL) in one buffer, sorted.
struct Listing {
    names: Vec<u8>,
    /// (start of the name in `names`, its length without the NUL, type from the directory).
    entries: Vec<(u32, u32, rustix::fs::FileType)>,
}

impl Listing {
    fn read(directory: BorrowedFd<'_>, shown: &Path) -> Result<Listing, FileOpError> {
        let failed = |error: rustix::io::Errno| {
            FileOpError::io("reading directory", shown.display(), error.into())
        };
        let mut buffer: Vec<std::mem::MaybeUninit<u8>> = Vec::with_capacity(32 * 1024);
        buffer.resize(32 * 1024, std::mem::MaybeUninit::uninit());
        let mut raw = RawDir::new(directory, &mut buffer);
        let mut listing = Listing {
            names: Vec::new(),
            entries: Vec::new(),
        };
        while let Some(entry) = raw.next() {
            let entry = entry.map_err(failed)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let (Ok(start), Ok(length)) = (
                u32::try_from(listing.names.len()),
                u32::try_from(name.len()),
            ) else {
                return Err(failed(rustix::io::Errno::OVERFLOW));
            };
            listing.names.extend_from_slice(name);
            listing.names.push(0);
            listing.entries.push((start, length, entry.file_type()));
        }
        let names = &listing.names;
        listing.entries.sort_unstable_by(|a, b| {
            names[a.0 as usize..(a.0 + a.1) as usize]
                .cmp(&names[b.0 as usize..(b.0 + b.1) as usize])
        });
        Ok(listing)
    }

    /// The name of entry `index`, with and without its NUL.
    fn name(&self, index: usize) -> (&std::ffi::CStr, &[u8]) {
        let (start, length, _) = self.entries[index];
        let with_nul = &self.names[start as usize..=(start + length) as usize];
        // a name from getdents has no NUL inside, and one was pushed after it
        let c_name = std::ffi::CStr::from_bytes_with_nul(with_nul).unwrap_or_default();
        (c_name, &with_nul[..with_nul.len() - 1])
    }
}

/// `lstat` of `name` inside `directory`.
fn stat_at(directory: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<Stat, rustix::io::Errno> {
    rustix::fs::statat(directory, name, AtFlags::SYMLINK_NOFOLLOW)
        .map(|stat| Stat::from_rustix(&stat))
}

/// Walks the directory `directory` (at `absolute`, the match's `rel_dir`), appending taken
/// entries as segments (runs of entries, in order), so that a subtree's entries are never
/// moved again once listed.
///
/// The directory is read with `getdents` into one buffer, each entry is `lstat`ed relative to
/// the directory's descriptor (no path lookup from the root per file), subdirectories are
/// opened relative to it too, and sibling subdirectories are walked in parallel on rayon's
/// pool; the result keeps walk order (parents before children, names sorted). Below a
/// directory whose filters are settled (every entry taken whatever its name: no filters, or
/// an included directory with nothing re-excluded), no pattern runs and no path string is
/// built for the patterns.
fn walk(
    filters: &Filters<'_>,
    directory: BorrowedFd<'_>,
    absolute: &Path,
    rel_dir: &Path,
    context_dir: &str,
    parent: &FilterInfo,
    out: &mut Vec<Vec<Entry>>,
) -> Result<(), FileOpError> {
    struct Child {
        /// Index in the listing.
        index: usize,
        entry: Entry,
        /// The child's own filter results (`None` when settled: the parent's hold).
        decision: Option<Decision>,
        context_rel: String,
    }
    impl Child {
        fn descends(&self) -> bool {
            self.entry.metadata.is_dir() && self.decision.as_ref().is_none_or(|d| d.descend)
        }
        fn selected(&self) -> bool {
            self.decision.as_ref().is_none_or(|d| d.selected)
        }
    }
    let listing = Listing::read(directory, absolute)?;
    let settled = filters.settled_below(parent);
    let mut children = Vec::with_capacity(listing.entries.len());
    for index in 0..listing.entries.len() {
        let (c_name, name) = listing.name(index);
        let name = std::ffi::OsStr::from_bytes(name);
        let listed_type = listing.entries[index].2;
        // `None` when removed while walking: it is not there
        let stat_child = || match stat_at(directory, c_name) {
            Ok(stat) => Ok(Some(stat)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(error) => Err(FileOpError::io(
                "reading",
                absolute.join(name).display(),
                error.into(),
            )),
        };
        let mut metadata = None;
        let is_dir = match listed_type {
            rustix::fs::FileType::Directory => true,
            // a file system that does not say: ask lstat
            rustix::fs::FileType::Unknown => {
                let Some(stat) = stat_child()? else { continue };
                metadata = Some(stat);
                stat.is_dir()
            }
            _ => false,
        };
        let mut rel = PathBuf::with_capacity(rel_dir.as_os_str().len() + 1 + name.len());
        rel.push(rel_dir);
        rel.push(name);
        let (decision, context_rel) = if settled {
            (None, String::new())
        } else {
            let context_rel = join_relative(context_dir, &name.to_string_lossy());
            let decision = filters.decide(&context_rel, &rel.to_string_lossy(), parent, is_dir);
            if !decision.selected && !(is_dir && decision.descend) {
                continue;
            }
            (Some(decision), context_rel)
        };
        let metadata = match metadata {
            Some(metadata) => metadata,
            None => match stat_child()? {
                Some(stat) => stat,
                None => continue,
            },
        };
        children.push(Child {
            index,
            entry: Entry {
                rel,
                metadata,
                selected: true,
            },
            decision,
            context_rel,
        });
    }
    let walk_child = |child: &Child| -> Result<Vec<Vec<Entry>>, FileOpError> {
        let mut below = Vec::new();
        if child.descends() {
            let (c_name, name) = listing.name(child.index);
            let child_absolute = absolute.join(std::ffi::OsStr::from_bytes(name));
            let child_directory = open_directory(directory, c_name, &child_absolute)?;
            walk(
                filters,
                child_directory.as_fd(),
                &child_absolute,
                &child.entry.rel,
                &child.context_rel,
                child.decision.as_ref().map_or(parent, |d| &d.info),
                &mut below,
            )?;
        }
        Ok(below)
    };
    let subtrees: Vec<Result<Vec<Vec<Entry>>, FileOpError>> =
        if children.iter().filter(|child| child.descends()).count() > 1 {
            children.par_iter().map(walk_child).collect()
        } else {
            children.iter().map(walk_child).collect()
        };
    let mut current: Vec<Entry> = Vec::with_capacity(children.len());
    for (child, below) in children.into_iter().zip(subtrees) {
        let below = below?;
        let selected = child.selected();
        let mut entry = child.entry;
        entry.selected = selected;
        if entry.metadata.is_dir() {
            // a directory only there for its contents, with nothing taken below, is not taken
            if !selected && below.iter().all(Vec::is_empty) {
                continue;
            }
            current.push(entry);
            if !below.is_empty() {
                out.push(std::mem::take(&mut current));
                out.extend(below);
            }
        } else if selected {
            current.push(entry);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    Ok(())
}

/// Whether a directory excluded by the source's filters still shows up because something
/// below it is re-included.
fn has_visible_descendant(
    filters: &Filters<'_>,
    absolute: &Path,
    context_dir: &str,
) -> Result<bool, FileOpError> {
    for (name, is_dir) in read_sorted(absolute)? {
        let context_rel = join_relative(context_dir, &name.to_string_lossy());
        let decision = filters.decide_context(&context_rel, is_dir);
        if decision.selected {
            return Ok(true);
        }
        if is_dir
            && decision.descend
            && has_visible_descendant(filters, &absolute.join(&name), &context_rel)?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The four pattern sets a path goes through.
struct Filters<'a> {
    context_include: Option<&'a PatternMatcher>,
    context_exclude: Option<&'a PatternMatcher>,
    copy_include: Option<&'a PatternMatcher>,
    copy_exclude: Option<&'a PatternMatcher>,
}

/// Matching results of a directory, handed to its children.
#[derive(Debug, Clone, Default)]
struct FilterInfo {
    context_include: MatchInfo,
    context_exclude: MatchInfo,
    copy_include: MatchInfo,
    copy_exclude: MatchInfo,
}

struct Decision {
    /// The path itself is taken.
    selected: bool,
    /// (Directories) something below may be taken.
    descend: bool,
    info: FilterInfo,
}

impl Filters<'_> {
    fn decide(
        &self,
        context_rel: &str,
        copy_rel: &str,
        parent: &FilterInfo,
        is_dir: bool,
    ) -> Decision {
        let mut decision = Decision {
            selected: true,
            descend: true,
            info: FilterInfo::default(),
        };
        apply_include(
            self.context_include,
            context_rel,
            &parent.context_include,
            is_dir,
            &mut decision,
            |info| &mut info.context_include,
        );
        apply_exclude(
            self.context_exclude,
            context_rel,
            &parent.context_exclude,
            is_dir,
            &mut decision,
            |info| &mut info.context_exclude,
        );
        apply_include(
            self.copy_include,
            copy_rel,
            &parent.copy_include,
            is_dir,
            &mut decision,
            |info| &mut info.copy_include,
        );
        apply_exclude(
            self.copy_exclude,
            copy_rel,
            &parent.copy_exclude,
            is_dir,
            &mut decision,
            |info| &mut info.copy_exclude,
        );
        decision
    }

    /// Whether everything below a directory with filter results `parent` is taken, whatever
    /// its name (the results of everything below are then `parent`'s).
    fn settled_below(&self, parent: &FilterInfo) -> bool {
        let include = |matcher: Option<&PatternMatcher>, info: &MatchInfo| {
            matcher.is_none_or(|matcher| matcher.settled_below(info) == Some(true))
        };
        let exclude = |matcher: Option<&PatternMatcher>, info: &MatchInfo| {
            matcher.is_none_or(|matcher| matcher.settled_below(info) == Some(false))
        };
        include(self.context_include, &parent.context_include)
            && exclude(self.context_exclude, &parent.context_exclude)
            && include(self.copy_include, &parent.copy_include)
            && exclude(self.copy_exclude, &parent.copy_exclude)
    }

    /// The source's own filters only (is this path in the filtered view of the source).
    fn decide_context(&self, context_rel: &str, is_dir: bool) -> Decision {
        let only_context = Filters {
            context_include: self.context_include,
            context_exclude: self.context_exclude,
            copy_include: None,
            copy_exclude: None,
        };
        only_context.decide(context_rel, "", &FilterInfo::default(), is_dir)
    }
}

fn apply_include(
    matcher: Option<&PatternMatcher>,
    path: &str,
    parent: &MatchInfo,
    is_dir: bool,
    decision: &mut Decision,
    slot: impl Fn(&mut FilterInfo) -> &mut MatchInfo,
) {
    let Some(matcher) = matcher else { return };
    let (matched, info) = matcher.matches_with_parent(path, parent);
    *slot(&mut decision.info) = info;
    if !matched {
        decision.selected = false;
        if is_dir && decision.descend && matcher.can_skip_unmatched_dir(path) {
            decision.descend = false;
        }
    }
}

fn apply_exclude(
    matcher: Option<&PatternMatcher>,
    path: &str,
    parent: &MatchInfo,
    is_dir: bool,
    decision: &mut Decision,
    slot: impl Fn(&mut FilterInfo) -> &mut MatchInfo,
) {
    let Some(matcher) = matcher else { return };
    let (matched, info) = matcher.matches_with_parent(path, parent);
    *slot(&mut decision.info) = info;
    if matched {
        decision.selected = false;
        if is_dir && decision.descend && matcher.can_skip_matched_dir(path) {
            decision.descend = false;
        }
    }
}

/// Expands a wildcard path against the source's filtered view (used by `rm` on the
/// destination, with no filters): cleaned absolute matches, sorted.
pub(crate) fn expand_wildcards(
    source: &SourceRoot,
    pattern: &str,
    follow_symlinks: bool,
) -> Result<Vec<String>, FileOpError> {
    let filters = Filters {
        context_include: source.include.as_deref(),
        context_exclude: source.exclude.as_deref(),
        copy_include: None,
        copy_exclude: None,
    };
    resolve_wildcards(source, &filters, pattern, follow_symlinks)
}

/// Whether a path has an unescaped `*`, `?` or `[` (fsutil's `containsWildcards`).
pub(crate) fn contains_wildcards(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' => index += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        index += 1;
    }
    false
}

/// Expands a wildcard source path: the names before the first wildcard are resolved (links
/// followed when `follow_symlinks`), the rest matched name by name with Go's `filepath.Match`.
/// A matched directory is not searched further. Returns cleaned absolute paths, sorted.
fn resolve_wildcards(
    source: &SourceRoot,
    filters: &Filters<'_>,
    pattern: &str,
    follow_symlinks: bool,
) -> Result<Vec<String>, FileOpError> {
    let names = clean_components(pattern.as_bytes());
    let first_wildcard = names
        .iter()
        .position(|name| contains_wildcards(&String::from_utf8_lossy(name)))
        .unwrap_or(names.len());
    let prefix = join_names(&names[..first_wildcard]);
    let patterns: Vec<String> = names[first_wildcard..]
        .iter()
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect();
    let base = if prefix.as_os_str().is_empty() {
        PathBuf::new()
    } else {
        let prefix_bytes = prefix.as_os_str().as_bytes();
        match resolve_in_root(&source.dir, prefix_bytes, follow_symlinks) {
            Ok(resolved) => resolved,
            Err(super::root::ResolveError::Io(error))
                if error.kind() == io::ErrorKind::NotFound
                    || error.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Ok(Vec::new())
            }
            Err(error) => return Err(FileOpError::from_resolve(error, pattern)),
        }
    };
    for pattern_name in &patterns {
        validate_glob(pattern_name).map_err(|reason| FileOpError::InvalidWildcard {
            pattern: pattern.to_string(),
            reason,
        })?;
    }
    let mut found = Vec::new();
    let absolute = source.dir.join(&base);
    match std::fs::symlink_metadata(&absolute) {
        Ok(metadata) if metadata.is_dir() => {}
        _ => return Ok(found),
    }
    match_level(source, filters, &absolute, &base, &patterns, &mut found)?;
    Ok(found)
}

fn match_level(
    source: &SourceRoot,
    filters: &Filters<'_>,
    absolute: &Path,
    rel: &Path,
    patterns: &[String],
    found: &mut Vec<String>,
) -> Result<(), FileOpError> {
    let Some((pattern, rest)) = patterns.split_first() else {
        return Ok(());
    };
    for (name, is_dir) in read_sorted(absolute)? {
        let name_text = name.to_string_lossy();
        if !glob_match(pattern, &name_text) {
            continue;
        }
        let child_rel = rel.join(&name);
        let context_rel = child_rel.to_string_lossy().into_owned();
        if source.has_filters() {
            let decision = filters.decide_context(&context_rel, is_dir);
            let visible = decision.selected
                || (is_dir
                    && decision.descend
                    && has_visible_descendant(filters, &absolute.join(&name), &context_rel)?);
            if !visible {
                continue;
            }
        }
        if rest.is_empty() {
            found.push(format!("/{context_rel}"));
        } else if is_dir {
            match_level(
                source,
                filters,
                &absolute.join(&name),
                &child_rel,
                rest,
                found,
            )?;
        }
    }
    Ok(())
}

/// Checks a pattern's syntax as Go's `filepath.Match` would report `ErrBadPattern`.
fn validate_glob(pattern: &str) -> Result<(), &'static str> {
    let characters: Vec<char> = pattern.chars().collect();
    let mut index = 0;
    while index < characters.len() {
        match characters[index] {
            '\\' => {
                if index + 1 >= characters.len() {
                    return Err("trailing backslash");
                }
                index += 2;
            }
            '[' => {
                index = parse_class(&characters, index + 1)?.2;
            }
            _ => index += 1,
        }
    }
    Ok(())
}

/// Parses a class after its `[`: (negated, ranges, index after `]`).
fn parse_class(
    characters: &[char],
    start: usize,
) -> Result<(bool, Vec<(char, char)>, usize), &'static str> {
    let mut index = start;
    let mut negated = false;
    if characters.get(index) == Some(&'^') {
        negated = true;
        index += 1;
    }
    let mut ranges = Vec::new();
    loop {
        match characters.get(index) {
            None => return Err("unterminated character class"),
            Some(']') if !ranges.is_empty() => return Ok((negated, ranges, index + 1)),
            _ => {}
        }
        let (low, next) = class_character(characters, index)?;
        index = next;
        let mut high = low;
        if characters.get(index) == Some(&'-') {
            let (upper, next) = class_character(characters, index + 1)?;
            high = upper;
            index = next;
        }
        if low > high {
            return Err("character class range out of order");
        }
        ranges.push((low, high));
    }
}

fn class_character(characters: &[char], mut index: usize) -> Result<(char, usize), &'static str> {
    match characters.get(index) {
        None | Some('-') | Some(']') => return Err("malformed character class"),
        Some('\\') => index += 1,
        Some(_) => {}
    }
    let character = *characters
        .get(index)
        .ok_or("unterminated character class")?;
    Ok((character, index + 1))
}

/// Go's `filepath.Match` for one name (no `/` in it): `*`, `?`, `[...]`, `\` escapes.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    glob_at(&pattern, 0, &name, 0)
}

fn glob_at(pattern: &[char], mut p: usize, name: &[char], mut n: usize) -> bool {
    // Backtracking over the last `*` only, as `*` never crosses a `/` here.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            match pattern[p] {
                '*' => {
                    while p < pattern.len() && pattern[p] == '*' {
                        p += 1;
                    }
                    star = Some((p, n));
                    continue;
                }
                '?' if n < name.len() && name[n] != '/' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                '[' if n < name.len() => {
                    if let Ok((negated, ranges, next)) = parse_class(pattern, p + 1) {
                        let within = ranges
                            .iter()
                            .any(|&(low, high)| low <= name[n] && name[n] <= high);
                        if within != negated && name[n] != '/' {
                            p = next;
                            n += 1;
                            continue;
                        }
                    }
                }
                '\\' if p + 1 < pattern.len() && n < name.len() && pattern[p + 1] == name[n] => {
                    p += 2;
                    n += 1;
                    continue;
                }
                literal
                    if !matches!(literal, '*' | '?' | '[' | '\\')
                        && n < name.len()
                        && literal == name[n] =>
                {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        } else if n == name.len() {
            return true;
        }
        // Mismatch: let the last star eat one more character.
        match star {
            Some((star_p, star_n)) if star_n < name.len() && name[star_n] != '/' => {
                star = Some((star_p, star_n + 1));
                p = star_p;
                n = star_n + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_go() {
        for (pattern, name, expected) in [
            ("*", "abc", true),
            ("*", ".hidden", true),
            ("a*", "abc", true),
            ("a*c", "abc", true),
            ("a*d", "abc", false),
            ("?bc", "abc", true),
            ("?", "ab", false),
            ("[a-c]x", "bx", true),
            ("[^a-c]x", "bx", false),
            ("[!a]x", "!x", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("*.txt", "notes.txt", true),
            ("*.txt", "notes.txt.bak", false),
            ("**", "x", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ] {
            assert_eq!(glob_match(pattern, name), expected, "{pattern} {name}");
        }
        assert!(validate_glob("[a-").is_err());
        assert!(validate_glob("abc\\").is_err());
        assert!(validate_glob("[]").is_err());
    }

    #[test]
    fn wildcard_detection() {
        assert!(contains_wildcards("/a/*.txt"));
        assert!(contains_wildcards("/a/[ab]"));
        assert!(!contains_wildcards("/a/\\*.txt"));
        assert!(!contains_wildcards("/plain/path"));
    }
}
