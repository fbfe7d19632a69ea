//! The watchdog (being written).
