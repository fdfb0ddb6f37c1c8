//! Helpers shared by the end-to-end tests: free ports, spawning the real binaries, HTTP polling.
