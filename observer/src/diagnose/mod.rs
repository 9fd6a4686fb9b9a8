//! Per-container diagnosis: events → findings.
