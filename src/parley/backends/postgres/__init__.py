"""The PostgreSQL technology: stores in one database shared by every node of a cluster."""
