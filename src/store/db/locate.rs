//! Locating damage that SQLite reports without saying where: a walk of the
//! database file's b-trees (as the SQLite file format documents them) that
//! finds the first page whose header cannot be right.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Page types of b-tree pages (the first byte of the page header).
const INDEX_INTERIOR: u8 = 2;
const TABLE_INTERIOR: u8 = 5;
const INDEX_LEAF: u8 = 10;
const TABLE_LEAF: u8 = 13;

/// The first page, reachable from `roots`, whose b-tree header is invalid:
/// an unknown page type, cells that do not fit, or a child pointer outside
/// the file. `None` when every header reachable looks right.
pub fn first_bad_page(file: &File, page_size: usize, roots: &[u32]) -> Option<u32> {
    let len = file.metadata().ok()?.len();
    let pages = u32::try_from(len / page_size as u64).ok()?;
    let mut stack: Vec<u32> = roots.iter().rev().copied().collect();
    let mut seen = HashSet::new();
    let mut page = vec![0u8; page_size];
    while let Some(number) = stack.pop() {
        if number == 0 || number > pages {
            continue;
        }
        if !seen.insert(number) {
            // Two parents claim the page: the tree is not a tree.
            return Some(number);
        }
        let offset = u64::from(number - 1) * page_size as u64;
        if file.read_exact_at(&mut page, offset).is_err() {
            return Some(number);
        }
        let children = match children(&page, if number == 1 { 100 } else { 0 }, pages) {
            Some(children) => children,
            None => return Some(number),
        };
        stack.extend(children.into_iter().rev());
    }
    None
}

/// The child pages of one b-tree page, or `None` when its header is
/// invalid.
fn children(page: &[u8], header: usize, pages: u32) -> Option<Vec<u32>> {
    let kind = *page.get(header)?;
    let interior = match kind {
        INDEX_INTERIOR | TABLE_INTERIOR => true,
        INDEX_LEAF | TABLE_LEAF => false,
        _ => return None,
    };
    let cells = usize::from(u16::from_be_bytes([
        *page.get(header + 3)?,
        *page.get(header + 4)?,
    ]));
    let pointers = header + if interior { 12 } else { 8 };
    if pointers + 2 * cells > page.len() {
        return None;
    }
    if !interior {
        return Some(Vec::new());
    }
    let child = |at: usize| -> Option<u32> {
        let bytes = page.get(at..at + 4)?;
        let number = u32::from_be_bytes(bytes.try_into().ok()?);
        (number >= 1 && number <= pages).then_some(number)
    };
    let mut out = Vec::with_capacity(cells + 1);
    for i in 0..cells {
        let at = pointers + 2 * i;
        let cell = usize::from(u16::from_be_bytes([page[at], page[at + 1]]));
        if cell < pointers + 2 * cells || cell + 4 > page.len() {
            return None;
        }
        out.push(child(cell)?);
    }
    out.push(child(header + 8)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_page_types_and_wild_pointers_are_invalid() {
        let mut page = vec![0u8; 512];
        page[0] = TABLE_LEAF;
        assert_eq!(children(&page, 0, 10), Some(Vec::new()));
        page[0] = 0x77;
        assert_eq!(children(&page, 0, 10), None);
        // An interior page with one cell pointing at page 3, right-most 4.
        page[0] = TABLE_INTERIOR;
        page[3..5].copy_from_slice(&1u16.to_be_bytes());
        page[8..12].copy_from_slice(&4u32.to_be_bytes());
        page[12..14].copy_from_slice(&400u16.to_be_bytes());
        page[400..404].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(children(&page, 0, 10), Some(vec![3, 4]));
        page[400..404].copy_from_slice(&99u32.to_be_bytes());
        assert_eq!(children(&page, 0, 10), None);
        // More cells than the page can hold.
        page[3..5].copy_from_slice(&300u16.to_be_bytes());
        assert_eq!(children(&page, 0, 10), None);
    }
}
