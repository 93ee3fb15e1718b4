-- As migration 024 leaves it: no foreign keys on the decision's tables.
ALTER TABLE reservations DROP CONSTRAINT IF EXISTS reservations_request_id_fkey,
    DROP CONSTRAINT IF EXISTS reservations_technician_id_fkey;
ALTER TABLE dispatch_requests DROP CONSTRAINT IF EXISTS dispatch_requests_technician_id_fkey;
