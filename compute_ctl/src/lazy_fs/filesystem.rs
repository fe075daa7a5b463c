//! One lazy mount (`PGDATA/base` or `PGDATA/global`): a pass-through
//! filesystem over a directory of the local store, except that a block of
//! a [`LazyFile`] is read from the pageserver the first time anything
//! reads (or partly writes) it, and written into the local file first.
//!
//! A listed segment nothing has looked up yet is *virtual*: shown in its
//! directory with its size, and created in the store (sparse) at its first
//! lookup, which every use of a path begins with.
//!
//! Every change goes through this mount, so the kernel may cache pages and
//! attributes (`FOPEN_KEEP_CACHE`, long TTLs). `fsync` has nothing to do:
//! the store is discarded when the compute stops, and durability is the
//! safekeepers' WAL.
//!
//! Requests are served by several threads at once: the inode table and
//! handle maps are behind locks held briefly; a lazy file's lock is not
//! held while pages are fetched (a block written meanwhile is not
//! overwritten by the fetched copy).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use postgres_format::constants::BLCKSZ;
use tracing::{error, info};

use super::inodes::{Inodes, ROOT};
use super::page_client::{PageClient, MAX_BATCH};
use super::store::LazyFile;

/// How long the kernel may cache names and attributes: every change comes
/// through this mount, which the kernel sees.
const TTL: Duration = Duration::from_secs(60);
/// The kernel's readahead window on a lazy file (it asks for it in FUSE
/// reads of up to 128 KiB, each fetched as one pipelined batch).
const MAX_READAHEAD: u32 = 1 << 20;

type Lazy = Arc<Mutex<LazyFile>>;

struct DirEntry {
    ino: u64,
    kind: FileType,
    name: OsString,
}

/// One mount of the lazy data directory.
pub struct LazyFs {
    name: &'static str,
    root: PathBuf,
    owner: (u32, u32),
    inodes: RwLock<Inodes>,
    lazy: Mutex<HashMap<u64, Lazy>>,
    /// Segments not yet created in the store: path → length.
    virtual_files: Mutex<HashMap<PathBuf, u64>>,
    files: RwLock<HashMap<u64, Arc<File>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_handle: AtomicU64,
    pages: Arc<PageClient>,
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn kind_of(meta: &Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    }
}

impl LazyFs {
    /// A mount over `root`, whose `lazy` files (by path under `root`) start
    /// in the pageserver, and whose `virtual_files` (path → length) are not
    /// in the store yet; files are shown as owned by `owner` (uid, gid).
    pub fn new(
        name: &'static str,
        root: PathBuf,
        lazy: HashMap<PathBuf, LazyFile>,
        virtual_files: HashMap<PathBuf, u64>,
        pages: Arc<PageClient>,
        owner: (u32, u32),
    ) -> Self {
        let mut inodes = Inodes::default();
        let lazy = lazy
            .into_iter()
            .map(|(path, file)| (inodes.number(&path), Arc::new(Mutex::new(file))))
            .collect();
        LazyFs {
            name,
            root,
            owner,
            inodes: RwLock::new(inodes),
            lazy: Mutex::new(lazy),
            virtual_files: Mutex::new(virtual_files),
            files: RwLock::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            pages,
        }
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        let inodes = self.inodes.read().unwrap_or_else(|e| e.into_inner());
        inodes.path(ino.0).map(Path::to_owned).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/')
        {
            return Err(Errno::EINVAL);
        }
        Ok(self.path(parent)?.join(name))
    }

    fn full(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }

    fn number(&self, path: &Path) -> u64 {
        let mut inodes = self.inodes.write().unwrap_or_else(|e| e.into_inner());
        inodes.number(path)
    }

    /// `path` is gone (unlinked or replaced): so is its lazy state.
    fn forget_path(&self, path: &Path) {
        let removed = {
            let mut inodes = self.inodes.write().unwrap_or_else(|e| e.into_inner());
            inodes.remove(path)
        };
        if let Some(ino) = removed {
            lock(&self.lazy).remove(&ino);
        }
    }

    fn lazy_of(&self, ino: u64) -> Option<Lazy> {
        lock(&self.lazy).get(&ino).cloned()
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        files.get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn add_file(&self, file: File) -> FileHandle {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
        files.insert(fh, Arc::new(file));
        FileHandle(fh)
    }

    fn attr(&self, ino: u64, meta: &Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: meta.len(),
            blocks: meta.blocks(),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: time(meta.ctime(), meta.ctime_nsec()),
            kind: kind_of(meta),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink().min(u32::MAX as u64) as u32,
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: BLCKSZ as u32,
            flags: 0,
        }
    }

    fn entry(&self, path: &Path) -> Result<FileAttr, Errno> {
        let meta = self.metadata(path)?;
        Ok(self.attr(self.number(path), &meta))
    }

    /// The store's metadata of `path`, creating it first if it is virtual.
    fn metadata(&self, path: &Path) -> Result<Metadata, Errno> {
        self.materialize(path)?;
        std::fs::symlink_metadata(self.full(path)).map_err(errno)
    }

    /// Creates `path` in the store if it is a virtual segment.
    fn materialize(&self, path: &Path) -> Result<(), Errno> {
        let mut virtual_files = lock(&self.virtual_files);
        let Some(&len) = virtual_files.get(path) else {
            return Ok(());
        };
        super::store::materialize(&self.full(path), len).map_err(|e| {
            error!(
                mount = self.name,
                "creating {} in the store: {e}",
                path.display()
            );
            errno(e)
        })?;
        virtual_files.remove(path);
        Ok(())
    }

    /// The virtual segments directly in directory `dir`.
    fn virtual_in(&self, dir: &Path) -> Vec<PathBuf> {
        lock(&self.virtual_files)
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .cloned()
            .collect()
    }

    /// Reads the blocks `blocks` of `lazy` from the pageserver into `file`
    /// (those still remote once the pages arrive).
    fn fetch(&self, lazy: &Lazy, file: &File, blocks: &[u32]) -> Result<(), Errno> {
        let (rel, first_block) = {
            let l = lock(lazy);
            (l.rel, l.first_block)
        };
        for chunk in blocks.chunks(MAX_BATCH) {
            let numbers = chunk.iter().map(|b| first_block + b).collect();
            let pages = self.pages.get_pages(rel, numbers).map_err(|e| {
                error!(mount = self.name, "reading pages from the pageserver: {e}");
                Errno::EIO
            })?;
            let mut l = lock(lazy);
            for (&block, page) in chunk.iter().zip(pages) {
                if l.is_remote(block) {
                    file.write_all_at(&page, block as u64 * BLCKSZ as u64)
                        .map_err(errno)?;
                    l.set_present(block);
                }
            }
        }
        Ok(())
    }

    /// Makes the bytes `[offset, offset + len)` of a lazy file local.
    fn fill(&self, lazy: &Lazy, file: &File, offset: u64, len: u64) -> Result<(), Errno> {
        let remote = lock(lazy).remote_in(offset, len);
        if remote.is_empty() {
            return Ok(());
        }
        self.fetch(lazy, file, &remote)
    }

    /// Makes local the remote blocks that `[offset, offset + len)` covers
    /// only in part (a write there keeps the rest of the block).
    fn fill_edges(&self, lazy: &Lazy, file: &File, offset: u64, len: u64) -> Result<(), Errno> {
        let block = BLCKSZ as u64;
        let end = offset + len;
        let partial: Vec<u32> = lock(lazy)
            .remote_in(offset, len)
            .into_iter()
            .filter(|&b| {
                let (start, stop) = (b as u64 * block, (b as u64 + 1) * block);
                offset > start || end < stop
            })
            .collect();
        if partial.is_empty() {
            return Ok(());
        }
        self.fetch(lazy, file, &partial)
    }

    fn truncate(&self, ino: u64, file: &File, size: u64) -> Result<(), Errno> {
        match self.lazy_of(ino) {
            Some(lazy) => {
                if !size.is_multiple_of(BLCKSZ as u64) {
                    self.fill(&lazy, file, size, 1)?;
                }
                let mut l = lock(&lazy);
                file.set_len(size).map_err(errno)?;
                l.truncate(size);
            }
            None => file.set_len(size).map_err(errno)?,
        }
        Ok(())
    }

    fn open_backing(&self, path: &Path) -> Result<File, Errno> {
        self.materialize(path)?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.full(path))
            .map_err(errno)
    }

    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        size: Option<u64>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let path = self.path(ino);
        if let Some(mode) = mode {
            let path = path.clone()?;
            self.materialize(&path)?;
            std::fs::set_permissions(
                self.full(&path),
                std::fs::Permissions::from_mode(mode & 0o7777),
            )
            .map_err(errno)?;
        }
        if let Some(size) = size {
            let file = match fh {
                Some(fh) => self.file(fh)?,
                None => Arc::new(self.open_backing(&path.clone()?)?),
            };
            self.truncate(ino.0, &file, size)?;
        }
        let meta = match fh {
            Some(fh) => self.file(fh)?.metadata().map_err(errno)?,
            None => self.metadata(&path?)?,
        };
        Ok(self.attr(ino.0, &meta))
    }

    fn do_create(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, FileHandle), Errno> {
        let path = self.child(parent, name)?;
        self.materialize(&path)?;
        let full = self.full(&path);
        let existed = full.symlink_metadata().is_ok();
        let mut options = OpenOptions::new();
        options.read(true).write(true).mode(mode & !umask & 0o7777);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        let file = options.open(&full).map_err(errno)?;
        if !existed {
            // A stale number for this name belongs to a file now gone.
            self.forget_path(&path);
        }
        let ino = self.number(&path);
        if existed && flags & libc::O_TRUNC != 0 {
            self.truncate(ino, &file, 0)?;
        }
        let meta = file.metadata().map_err(errno)?;
        let attr = self.attr(ino, &meta);
        Ok((attr, self.add_file(file)))
    }

    fn list_dir(&self, ino: INodeNo) -> Result<Vec<DirEntry>, Errno> {
        let path = self.path(ino)?;
        let mut entries = vec![DirEntry {
            ino: ino.0,
            kind: FileType::Directory,
            name: ".".into(),
        }];
        let parent = match path.parent() {
            Some(parent) if ino.0 != ROOT => self.number(parent),
            _ => ROOT,
        };
        entries.push(DirEntry {
            ino: parent,
            kind: FileType::Directory,
            name: "..".into(),
        });
        for entry in std::fs::read_dir(self.full(&path)).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let kind = match entry.file_type().map_err(errno)? {
                t if t.is_dir() => FileType::Directory,
                t if t.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            let name = entry.file_name();
            let ino = self.number(&path.join(&name));
            entries.push(DirEntry { ino, kind, name });
        }
        for file in self.virtual_in(&path) {
            let Some(name) = file.file_name().map(OsStr::to_owned) else {
                continue;
            };
            let ino = self.number(&file);
            entries.push(DirEntry {
                ino,
                kind: FileType::RegularFile,
                name,
            });
        }
        Ok(entries)
    }

    /// How many blocks are still only in the pageserver.
    pub fn remote_blocks(&self) -> u64 {
        let lazy: Vec<Lazy> = lock(&self.lazy).values().cloned().collect();
        lazy.iter().map(|l| lock(l).remote_count()).sum()
    }
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(nearest);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        info!(
            mount = self.name,
            remote_blocks = self.remote_blocks(),
            "unmounted"
        );
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|path| self.entry(&path)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let meta = match fh.map(|fh| self.file(fh)) {
            Some(Ok(file)) => file.metadata().map_err(errno),
            _ => self.path(ino).and_then(|path| self.metadata(&path)),
        };
        match meta {
            Ok(meta) => reply.attr(&TTL, &self.attr(ino.0, &meta)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, mode, size, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        match self.do_create(parent, name, mode, umask, libc::O_EXCL) {
            Ok((attr, fh)) => {
                let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
                files.remove(&fh.0);
                reply.entry(&TTL, &attr, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let made = self.child(parent, name).and_then(|path| {
            if lock(&self.virtual_files).contains_key(&path) {
                return Err(Errno::EEXIST);
            }
            std::fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(self.full(&path))
                .map_err(errno)?;
            self.forget_path(&path);
            self.entry(&path)
        });
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let removed = self.child(parent, name).and_then(|path| {
            self.materialize(&path)?;
            std::fs::remove_file(self.full(&path)).map_err(errno)?;
            self.forget_path(&path);
            Ok(())
        });
        match removed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let removed = self.child(parent, name).and_then(|path| {
            if !self.virtual_in(&path).is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            std::fs::remove_dir(self.full(&path)).map_err(errno)?;
            self.forget_path(&path);
            Ok(())
        });
        match removed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let renamed = (|| {
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            if flags.contains(RenameFlags::RENAME_EXCHANGE)
                || flags.contains(RenameFlags::RENAME_WHITEOUT)
            {
                return Err(Errno::EINVAL);
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE)
                && self.full(&to).symlink_metadata().is_ok()
            {
                return Err(Errno::EEXIST);
            }
            self.materialize(&from)?;
            self.materialize(&to)?;
            let mut inodes = self.inodes.write().unwrap_or_else(|e| e.into_inner());
            std::fs::rename(self.full(&from), self.full(&to)).map_err(errno)?;
            let replaced = inodes.rename(&from, &to);
            drop(inodes);
            if let Some(ino) = replaced {
                lock(&self.lazy).remove(&ino);
            }
            Ok(())
        })();
        match renamed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened = self.path(ino).and_then(|path| {
            let file = self.open_backing(&path)?;
            if flags.0 & libc::O_TRUNC != 0 {
                self.truncate(ino.0, &file, 0)?;
            }
            Ok(self.add_file(file))
        });
        match opened {
            Ok(fh) => reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let read = (|| {
            let file = self.file(fh)?;
            if let Some(lazy) = self.lazy_of(ino.0) {
                self.fill(&lazy, &file, offset, size as u64)?;
            }
            let mut buf = vec![0u8; size as usize];
            let mut done = 0;
            while done < buf.len() {
                match file.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(done);
            Ok(buf)
        })();
        match read {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let written = (|| {
            let file = self.file(fh)?;
            let len = data.len() as u64;
            match self.lazy_of(ino.0) {
                Some(lazy) => {
                    self.fill_edges(&lazy, &file, offset, len)?;
                    let mut l = lock(&lazy);
                    file.write_all_at(data, offset).map_err(errno)?;
                    for block in l.remote_in(offset, len) {
                        l.set_present(block);
                    }
                }
                None => file.write_all_at(data, offset).map_err(errno)?,
            }
            Ok(data.len() as u32)
        })();
        match written {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
        files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.list_dir(ino) {
            Ok(entries) => {
                let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
                lock(&self.dirs).insert(fh, Arc::new(entries));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = lock(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (index, entry) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(entry.ino),
                index as u64 + 1,
                entry.kind,
                &entry.name,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.root) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(parent, name, mode, umask, flags) {
            Ok((attr, fh)) => {
                reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::FOPEN_KEEP_CACHE)
            }
            Err(e) => reply.error(e),
        }
    }

    // No extended attributes: ENOSYS, which the kernel remembers (it asks
    // for `security.capability` before writes otherwise).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EOPNOTSUPP);
    }
}
