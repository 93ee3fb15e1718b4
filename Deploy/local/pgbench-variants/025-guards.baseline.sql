-- Migration 025 undone: the seven table CHECK constraints instead of the domains (the domains are
-- created if missing, so the variant can switch back to them).
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'dispatch_count' AND typnamespace = current_schema()::regnamespace) THEN
    CREATE DOMAIN dispatch_count AS integer CHECK (VALUE >= 0);
    CREATE DOMAIN dispatch_activity AS text CHECK (VALUE IN ('available', 'busy', 'offline'));
    CREATE DOMAIN dispatch_worker_kind AS text CHECK (VALUE IN ('technician', 'agent'));
    CREATE DOMAIN dispatch_request_status AS text CHECK (VALUE IN ('waiting', 'offered', 'assigned', 'completed', 'cancelled'));
    CREATE DOMAIN dispatch_reservation_status AS text CHECK (VALUE IN ('pending', 'accepted', 'declined', 'timed_out', 'completed', 'transferred'));
  END IF;
END $$;
ALTER TABLE technicians ALTER COLUMN capacity TYPE integer, ALTER COLUMN active_load TYPE integer, ALTER COLUMN activity TYPE text, ALTER COLUMN kind TYPE text;
ALTER TABLE dispatch_requests ALTER COLUMN status TYPE text, ALTER COLUMN worker_kind TYPE text;
ALTER TABLE reservations ALTER COLUMN status TYPE text;
ALTER TABLE technicians DROP CONSTRAINT IF EXISTS technicians_capacity_check, DROP CONSTRAINT IF EXISTS technicians_active_load_check, DROP CONSTRAINT IF EXISTS technicians_activity_check, DROP CONSTRAINT IF EXISTS technicians_kind_check;
ALTER TABLE technicians ADD CONSTRAINT technicians_capacity_check CHECK (capacity >= 0), ADD CONSTRAINT technicians_active_load_check CHECK (active_load >= 0), ADD CONSTRAINT technicians_activity_check CHECK (activity IN ('available', 'busy', 'offline')), ADD CONSTRAINT technicians_kind_check CHECK (kind IN ('technician', 'agent'));
ALTER TABLE dispatch_requests DROP CONSTRAINT IF EXISTS dispatch_requests_status_check, DROP CONSTRAINT IF EXISTS dispatch_requests_worker_kind_check;
ALTER TABLE dispatch_requests ADD CONSTRAINT dispatch_requests_status_check CHECK (status IN ('waiting', 'offered', 'assigned', 'completed', 'cancelled')), ADD CONSTRAINT dispatch_requests_worker_kind_check CHECK (worker_kind IN ('technician', 'agent'));
ALTER TABLE reservations DROP CONSTRAINT IF EXISTS reservations_status_check;
ALTER TABLE reservations ADD CONSTRAINT reservations_status_check CHECK (status IN ('pending', 'accepted', 'declined', 'timed_out', 'completed', 'transferred'));
VACUUM ANALYZE technicians;
