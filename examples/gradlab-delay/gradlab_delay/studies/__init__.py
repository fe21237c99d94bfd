"""The plugin's study files (entry-point group gradlab.studies: NAME.toml in this package)."""
