-- As migration 025 leaves it: the guards as domains.
ALTER TABLE technicians DROP CONSTRAINT IF EXISTS technicians_capacity_check, DROP CONSTRAINT IF EXISTS technicians_active_load_check, DROP CONSTRAINT IF EXISTS technicians_activity_check, DROP CONSTRAINT IF EXISTS technicians_kind_check;
ALTER TABLE dispatch_requests DROP CONSTRAINT IF EXISTS dispatch_requests_status_check, DROP CONSTRAINT IF EXISTS dispatch_requests_worker_kind_check;
ALTER TABLE reservations DROP CONSTRAINT IF EXISTS reservations_status_check;
ALTER TABLE technicians ALTER COLUMN capacity TYPE dispatch_count, ALTER COLUMN active_load TYPE dispatch_count, ALTER COLUMN activity TYPE dispatch_activity, ALTER COLUMN kind TYPE dispatch_worker_kind;
ALTER TABLE dispatch_requests ALTER COLUMN status TYPE dispatch_request_status, ALTER COLUMN worker_kind TYPE dispatch_worker_kind;
ALTER TABLE reservations ALTER COLUMN status TYPE dispatch_reservation_status;
VACUUM ANALYZE technicians;
