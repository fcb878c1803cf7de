//! Placeholder: filled by the dtype-table work.
