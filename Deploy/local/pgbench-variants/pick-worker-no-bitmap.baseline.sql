-- pick_worker as the migrations leave it (the planner may use bitmap scans).
ALTER FUNCTION pick_worker(text, text, text[], text[], float8, float8) RESET enable_bitmapscan;
VACUUM ANALYZE technicians;
