"""Test suite. Helpers shared by tests live here (mpvm, brokers, project_files)."""
