-- pick_worker forced to ordered index scans (tried 2026-11-24, much slower; not kept).
ALTER FUNCTION pick_worker(text, text, text[], text[], float8, float8) SET enable_bitmapscan = off;
VACUUM ANALYZE technicians;
