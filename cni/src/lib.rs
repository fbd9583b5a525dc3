//! CNI plugins (bridge, host-local, portmap, loopback) and the CNI client that the runtime uses.
//!
//! Empty until the pod networking issue: nothing here is used yet.
