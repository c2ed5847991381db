//! The stats printer, `malloc_stats_print`'s way: text or JSON handed to a callback in
//! pieces, each formatted into a buffer on the stack, so it allocates nothing and can
//! run inside a signal handler (if the callback can).

use core::ffi::{c_char, c_void, CStr};
use core::fmt::{self, Write};

use crate::posix::Heap;

/// `void (*write_cb)(void *cbopaque, const char *s)`.
pub(crate) type WriteCb = Option<unsafe extern "C" fn(*mut c_void, *const c_char)>;

/// Bytes formatted before each call to the callback (one more holds the NUL).
const PIECE: usize = 255;

/// Collects formatted text and hands it on in NUL-terminated pieces.
struct Sink {
    cb: WriteCb,
    opaque: *mut c_void,
    buf: [u8; PIECE + 1],
    len: usize,
}

impl Sink {
    fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        match self.cb {
            Some(cb) => {
                if let Some(end) = self.buf.get_mut(self.len) {
                    *end = 0;
                }
                // SAFETY: the caller of `sigalloc_stats_print` vouches for `cb` and its
                // `opaque`; the buffer is NUL-terminated above and outlives the call.
                unsafe { cb(self.opaque, self.buf.as_ptr().cast()) };
            }
            None => write_stderr(self.buf.get(..self.len).unwrap_or_default()),
        }
        self.len = 0;
    }
}

impl Write for Sink {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s.as_bytes();
        while !rest.is_empty() {
            if self.len == PIECE {
                self.flush();
            }
            let room = PIECE - self.len;
            let (now, later) = rest.split_at(rest.len().min(room));
            if let Some(dst) = self.buf.get_mut(self.len..self.len + now.len()) {
                dst.copy_from_slice(now);
            }
            self.len += now.len();
            rest = later;
        }
        Ok(())
    }
}

/// Writes all of `bytes` to file descriptor 2 with `write` (async-signal-safe).
pub(crate) fn write_stderr(mut bytes: &[u8]) {
    let saved = crate::posix::errno();
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for its length.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = bytes.get(n.unsigned_abs()..).unwrap_or_default();
        } else if n < 0 && crate::posix::errno() == libc::EINTR {
            continue;
        } else {
            break;
        }
    }
    crate::posix::set_errno(saved);
}

/// Whether the option string asks for JSON (`J`, as in jemalloc).
///
/// # Safety
/// - `opts` is null or a NUL-terminated string.
unsafe fn wants_json(opts: *const c_char) -> bool {
    if opts.is_null() {
        return false;
    }
    // SAFETY: our caller's promise.
    unsafe { CStr::from_ptr(opts) }.to_bytes().contains(&b'J')
}

/// Prints `h`'s statistics through `cb` (null: to stderr).
///
/// # Safety
/// - `cb`, if not null, may be called with `opaque` and a NUL-terminated string.
/// - `opts` is null or a NUL-terminated string.
pub(crate) unsafe fn print(h: &Heap, cb: WriteCb, opaque: *mut c_void, opts: *const c_char) {
    let mut out = Sink {
        cb,
        opaque,
        buf: [0; PIECE + 1],
        len: 0,
    };
    let stats = h.stats();
    let version = crate::api::VERSION;
    // SAFETY: our caller's promise.
    let _ = if unsafe { wants_json(opts) } {
        writeln!(
            out,
            "{{\"sigalloc\":{{\"version\":\"{version}\",\"mmap\":{},\"stats\":{}}}}}",
            h.mmap_enabled(),
            stats.json()
        )
    } else {
        write!(
            out,
            "___ Begin sigalloc statistics ___\nversion {version}, mmap {}\n{stats}___ End sigalloc statistics ___\n",
            if h.mmap_enabled() { "on" } else { "off" }
        )
    };
    out.flush();
}
