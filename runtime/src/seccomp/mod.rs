//! seccomp: the spec's profile compiled to BPF, and the built-in RuntimeDefault profile.
