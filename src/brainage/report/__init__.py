"""Stage 'stats': statistics, tables, figures and report entries. Reads tables and images; never imports torch."""
