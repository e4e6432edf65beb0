//! Huge pages for the big tables read at random: the key tail's set
//! ([`crate::pair::KeySet`]) and the key filter ([`crate::store::key_filter`]).
//!
//! The binary's allocator asks for no transparent huge pages (mimalloc's `no_thp`,
//! Cargo.toml): on this kind of machine the kernel zeroes all 2 MiB at the first touch
//! of a huge page, and a 20,000-pair run touched 54 MB where 29 would do. But a key tail
//! of a few hundred thousand keys is tens of MB read at random, one key per pair, and on
//! 4 KiB pages nearly every lookup misses the TLB: 300,000 fresh pairs took 6% longer
//! without huge pages (BENCHMARKS.md, fifteenth sitting). So these tables alone are
//! mapped on their own and advised for huge pages (`madvise(MADV_HUGEPAGE)`, which the
//! kernel honours in its default `madvise` mode), from one huge page (2 MiB) up; smaller ones,
//! as in a short run, come from the global allocator as before.

use allocator_api2::alloc::{AllocError, Allocator, Global, Layout};
use std::ptr::NonNull;

/// A huge page on x86_64 and aarch64 (with 4 KiB base pages), and the size from which
/// an allocation gets a mapping of its own.
const HUGE_PAGE: usize = 2 << 20;

/// An allocator for large tables read at random: from one huge page up, a private
/// anonymous mapping aligned to a huge page and advised for huge pages; below it, the
/// global allocator. Where the kernel has no transparent huge pages, the mapping is
/// still correct memory, on base pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HugePages;

impl HugePages {
    /// The length of the mapping an allocation of `layout` gets (whole huge pages), or
    /// `None` when it comes from the global allocator: the one test that both
    /// `allocate` and `deallocate` apply.
    fn mapping(layout: Layout) -> Option<usize> {
        (layout.size() >= HUGE_PAGE && layout.align() <= HUGE_PAGE)
            .then(|| layout.size().next_multiple_of(HUGE_PAGE))
    }

    /// `len` bytes (a multiple of the huge page) at an address aligned to a huge page.
    fn map(len: usize) -> Result<NonNull<u8>, AllocError> {
        let span = len.checked_add(HUGE_PAGE).ok_or(AllocError)?;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing
        // touches no existing memory.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(AllocError);
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let (head, tail) = (aligned - start, span - (aligned - start) - len);
        // SAFETY: both ranges lie inside the mapping just made and outside the part kept
        // (each is page-aligned: the mapping starts on a page, and HUGE_PAGE and `len`
        // are multiples of it).
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        // SAFETY: advice on the range kept; a kernel without transparent huge pages
        // refuses it (EINVAL) and the memory stays on base pages.
        unsafe {
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        NonNull::new(aligned as *mut u8).ok_or(AllocError)
    }
}

// SAFETY: memory from `allocate` stays valid until `deallocate` with the same layout,
// which routes it back by the same test of the layout (`mapping`): a mapping is unmapped
// whole, anything else goes back to the global allocator that made it.
unsafe impl Allocator for HugePages {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let Some(len) = Self::mapping(layout) else {
            return Global.allocate(layout);
        };
        Ok(NonNull::slice_from_raw_parts(Self::map(len)?, len))
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if Self::mapping(layout).is_none() {
            return Global.allocate_zeroed(layout);
        }
        // A fresh anonymous mapping reads as zeroes.
        self.allocate(layout)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        let Some(len) = Self::mapping(layout) else {
            // SAFETY: the caller's promise: `ptr` came from `allocate(layout)`, which
            // took it from `Global` for such a layout.
            unsafe { Global.deallocate(ptr, layout) };
            return;
        };
        // SAFETY: `ptr` and `len` are the mapping `allocate` made for this layout.
        unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `VmFlags` of the mapping that holds `ptr`, from /proc/self/smaps (`hg`: it
    /// was advised for huge pages).
    #[cfg(target_os = "linux")]
    fn vm_flags_at(ptr: *const u8) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let addr = ptr as usize;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((a, b)) = range.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = a <= addr && addr < b;
                continue;
            }
            if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return Some(flags.trim().to_string());
            }
        }
        None
    }

    #[test]
    fn a_large_table_is_mapped_aligned_and_zeroed_and_a_small_one_is_not() {
        let set_layout = Layout::from_size_align(5 << 20, 64).unwrap();
        let p = HugePages.allocate_zeroed(set_layout).unwrap();
        let (ptr, len) = (p.as_ptr() as *mut u8, p.len());
        assert_eq!(ptr as usize % HUGE_PAGE, 0, "aligned to a huge page");
        assert_eq!(len, 6 << 20, "rounded up to whole huge pages");
        // SAFETY: `len` bytes from `allocate_zeroed`, written and read here only.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        assert!(
            bytes.iter().all(|&b| b == 0),
            "a fresh mapping reads as zeroes"
        );
        bytes.iter_mut().step_by(4096).for_each(|b| *b = 1);
        #[cfg(target_os = "linux")]
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            let flags = vm_flags_at(ptr).expect("the mapping is in smaps");
            assert!(
                flags.split_whitespace().any(|f| f == "hg"),
                "advised for huge pages: VmFlags {flags}"
            );
        }
        // SAFETY: what `allocate_zeroed` returned, with its layout.
        unsafe { HugePages.deallocate(NonNull::new(ptr).unwrap(), set_layout) };

        let small = Layout::from_size_align(4096, 8).unwrap();
        let q = HugePages.allocate(small).unwrap();
        assert_eq!(q.len(), 4096);
        // SAFETY: the same.
        unsafe { HugePages.deallocate(q.cast(), small) };
    }

    #[test]
    fn a_key_set_that_grows_past_the_threshold_keeps_every_key() {
        let mut set = crate::pair::KeySet::default();
        let keys: Vec<crate::pair::PairKey> = (0..200_000u64)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect();
        for k in &keys {
            assert!(set.insert(*k));
        }
        assert_eq!(set.len(), keys.len());
        assert!(keys.iter().all(|k| set.contains(k)));
        assert!(!set.contains(blake3::hash(b"absent").as_bytes()));
    }
}
