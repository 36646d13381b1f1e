"""The SQLite technology: stores in the embedded file `<data_dir>/parley.db`."""
