//! The `report` table.
