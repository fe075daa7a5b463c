//! Relation pages: the standard page header (bufpage.h).

use crate::constants::{BLCKSZ, PG_PAGE_LAYOUT_VERSION, SIZE_OF_PAGE_HEADER_DATA};
use utils::Lsn;

/// The fixed header at the start of every standard page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub lsn: Lsn,
    pub checksum: u16,
    pub flags: u16,
    pub lower: u16,
    pub upper: u16,
    pub special: u16,
    pub pagesize_version: u16,
    pub prune_xid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("page is {0} bytes, expected {BLCKSZ}")]
    WrongSize(usize),
    #[error("page header is not sane: {0}")]
    InsaneHeader(String),
}

impl PageHeader {
    /// Read the header of an 8 KiB page. It is not checked: see [`Self::check_sane`].
    pub fn read(page: &[u8]) -> Result<PageHeader, PageError> {
        if page.len() != BLCKSZ {
            return Err(PageError::WrongSize(page.len()));
        }
        let u16_at = |o: usize| u16::from_le_bytes([page[o], page[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(page[o..o + 4].try_into().expect("4 bytes"));
        Ok(PageHeader {
            // pd_lsn is stored as two 32-bit halves, high first.
            lsn: Lsn(((u32_at(0) as u64) << 32) | u32_at(4) as u64),
            checksum: u16_at(8),
            flags: u16_at(10),
            lower: u16_at(12),
            upper: u16_at(14),
            special: u16_at(16),
            pagesize_version: u16_at(18),
            prune_xid: u32_at(20),
        })
    }

    pub fn page_size(&self) -> usize {
        (self.pagesize_version & 0xFF00) as usize
    }

    pub fn layout_version(&self) -> u8 {
        (self.pagesize_version & 0x00FF) as u8
    }

    /// The checks of PostgreSQL's `PageIsVerifiedExtended` on the header:
    /// size and layout version, and `header <= lower <= upper <= special <= BLCKSZ`
    /// with a MAXALIGNed special space.
    pub fn check_sane(&self) -> Result<(), PageError> {
        let fail = |why: String| Err(PageError::InsaneHeader(why));
        if self.page_size() != BLCKSZ || self.layout_version() != PG_PAGE_LAYOUT_VERSION {
            return fail(format!(
                "pd_pagesize_version is {:#06x}",
                self.pagesize_version
            ));
        }
        if self.flags & !0x0007 != 0 {
            return fail(format!("unknown pd_flags {:#06x}", self.flags));
        }
        let (lower, upper, special) = (
            self.lower as usize,
            self.upper as usize,
            self.special as usize,
        );
        if !(SIZE_OF_PAGE_HEADER_DATA <= lower && lower <= upper && upper <= special) {
            return fail(format!(
                "pd_lower {lower}, pd_upper {upper}, pd_special {special} out of order"
            ));
        }
        if special > BLCKSZ || !special.is_multiple_of(8) {
            return fail(format!(
                "pd_special {special} is not a MAXALIGNed offset in the page"
            ));
        }
        Ok(())
    }
}

/// True if the page is all zeros (a new, never initialised page).
pub fn is_new_page(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}

/// Set `pd_lsn`. The pageserver stores images with the LSN of the record
/// that produced them, as the page would have had after redo.
pub fn set_page_lsn(page: &mut [u8], lsn: Lsn) -> Result<(), PageError> {
    if page.len() != BLCKSZ {
        return Err(PageError::WrongSize(page.len()));
    }
    page[0..4].copy_from_slice(&((lsn.0 >> 32) as u32).to_le_bytes());
    page[4..8].copy_from_slice(&(lsn.0 as u32).to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_page() -> Vec<u8> {
        let mut page = vec![0u8; BLCKSZ];
        page[12..14].copy_from_slice(&24u16.to_le_bytes());
        page[14..16].copy_from_slice(&8192u16.to_le_bytes());
        page[16..18].copy_from_slice(&8192u16.to_le_bytes());
        page[18..20].copy_from_slice(&(8192u16 | 4).to_le_bytes());
        page
    }

    #[test]
    fn header_checks() {
        let mut page = empty_page();
        PageHeader::read(&page).unwrap().check_sane().unwrap();
        set_page_lsn(&mut page, Lsn(0x1_0000_0002)).unwrap();
        assert_eq!(PageHeader::read(&page).unwrap().lsn, Lsn(0x1_0000_0002));
        page[12..14].copy_from_slice(&9000u16.to_le_bytes());
        assert!(PageHeader::read(&page).unwrap().check_sane().is_err());
        assert!(PageHeader::read(&page[..100]).is_err());
        assert!(is_new_page(&[0u8; BLCKSZ]));
    }
}
