//! Fixtures for black-box tests of the built berth binaries.
