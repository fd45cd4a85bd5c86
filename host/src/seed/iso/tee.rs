//! Handing a file's bytes to a consumer on another thread as they are copied onto the
//! image, so that one read of the file feeds both. The seed's checksum of the agent is
//! taken this way: what the manifest lists is then exactly what the image holds, even if
//! the file changes while we run, and the agent is read once instead of twice.
//!
//! The writer owns a few buffers; each goes to the consumer filled and comes back empty,
//! so at most `DEPTH` chunks are in flight and nothing is allocated per chunk.

use std::fs::File;
use std::io::{self, Read as _};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Large enough that a 5 MiB agent takes a few dozen system calls, small enough that a
/// chunk is still in the cache when the consumer reads it.
const CHUNK: usize = 128 * 1024;
const DEPTH: usize = 4;

/// The writer's end: copies a file onto the image and passes each chunk on.
#[derive(Debug)]
pub struct Tee {
    filled: SyncSender<Vec<u8>>,
    emptied: Receiver<Vec<u8>>,
}

/// The consumer's end: the chunks, in order, until the copy ends or is abandoned.
#[derive(Debug)]
pub struct Chunks {
    filled: Receiver<Vec<u8>>,
    emptied: SyncSender<Vec<u8>>,
}

pub fn tee() -> (Tee, Chunks) {
    let (filled_tx, filled_rx) = sync_channel(DEPTH);
    let (emptied_tx, emptied_rx) = sync_channel(DEPTH);
    (Tee { filled: filled_tx, emptied: emptied_rx }, Chunks { filled: filled_rx, emptied: emptied_tx })
}

impl Tee {
    /// Copy up to `len` bytes of `src` (from where its offset is) to `out`, handing each
    /// chunk to the consumer after it is written. Returns how many bytes were copied: less
    /// than `len` if `src` ended early, which the caller reports.
    pub fn copy(self, src: &mut File, len: u64, out: &mut impl io::Write) -> io::Result<u64> {
        let mut made = 0;
        let mut copied = 0u64;
        while copied < len {
            let mut buf = if made < DEPTH {
                made += 1;
                vec![0; CHUNK]
            } else {
                let mut b = self.emptied.recv().map_err(|_| gone())?;
                b.resize(CHUNK, 0);
                b
            };
            let want = (len - copied).min(CHUNK as u64) as usize;
            let n = read_full(src, &mut buf[..want])?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            buf.truncate(n);
            self.filled.send(buf).map_err(|_| gone())?;
            copied += n as u64;
        }
        Ok(copied)
    }
}

impl Chunks {
    /// Feed every chunk to `f`; returns the number of bytes seen. Ends when the writer has
    /// finished with the file, or dropped it unwritten.
    pub fn for_each(self, mut f: impl FnMut(&[u8])) -> u64 {
        let mut seen = 0;
        for chunk in self.filled.iter() {
            f(&chunk);
            seen += chunk.len() as u64;
            // The writer may be done and gone; the buffer is then simply freed.
            let _ = self.emptied.send(chunk);
        }
        seen
    }
}

fn gone() -> io::Error {
    io::Error::other("the thread taking the copied bytes (the checksum) stopped")
}

/// Read until `buf` is full or the file ends.
fn read_full(src: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek as _, SeekFrom};

    fn temp_with(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src");
        std::fs::write(&p, bytes).unwrap();
        (dir, File::open(&p).unwrap())
    }

    #[test]
    fn the_consumer_sees_exactly_the_bytes_written_in_order() {
        // More chunks than buffers in flight, the last one short.
        let data: Vec<u8> = (0..(CHUNK * (DEPTH + 3) + 777)).map(|i| (i * 31 % 251) as u8).collect();
        let (dir, mut src) = temp_with(&data);
        let mut out = File::create(dir.path().join("out")).unwrap();
        let (tee, chunks) = tee();
        let seen = std::thread::spawn(move || {
            let mut all = Vec::new();
            chunks.for_each(|c| all.extend_from_slice(c));
            all
        });
        let copied = tee.copy(&mut src, data.len() as u64, &mut out).unwrap();
        assert_eq!(copied, data.len() as u64);
        assert_eq!(seen.join().unwrap(), data);
        out.seek(SeekFrom::Start(0)).unwrap();
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), data);
    }

    #[test]
    fn a_file_shorter_than_announced_copies_what_there_is() {
        let (dir, mut src) = temp_with(b"short");
        let mut out = File::create(dir.path().join("out")).unwrap();
        let (tee, chunks) = tee();
        let seen = std::thread::spawn(move || chunks.for_each(|_| {}));
        assert_eq!(tee.copy(&mut src, 5000, &mut out).unwrap(), 5);
        assert_eq!(seen.join().unwrap(), 5);
    }

    #[test]
    fn a_consumer_that_stopped_is_an_error_not_a_hang() {
        let data = vec![1u8; CHUNK * (DEPTH + 2)];
        let (dir, mut src) = temp_with(&data);
        let mut out = File::create(dir.path().join("out")).unwrap();
        let (tee, chunks) = tee();
        drop(chunks);
        let err = tee.copy(&mut src, data.len() as u64, &mut out).unwrap_err();
        assert!(err.to_string().contains("stopped"), "{err}");
    }

    #[test]
    fn an_abandoned_copy_ends_the_consumer() {
        let (tee, chunks) = tee();
        drop(tee);
        assert_eq!(chunks.for_each(|_| panic!("no chunk was written")), 0);
    }
}
