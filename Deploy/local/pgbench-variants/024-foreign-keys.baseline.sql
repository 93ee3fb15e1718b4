-- Migration 024's foreign keys put back (the decision's after-trigger checks).
ALTER TABLE reservations DROP CONSTRAINT IF EXISTS reservations_request_id_fkey,
    DROP CONSTRAINT IF EXISTS reservations_technician_id_fkey;
ALTER TABLE dispatch_requests DROP CONSTRAINT IF EXISTS dispatch_requests_technician_id_fkey;
ALTER TABLE reservations ADD CONSTRAINT reservations_request_id_fkey FOREIGN KEY (request_id) REFERENCES dispatch_requests (id),
    ADD CONSTRAINT reservations_technician_id_fkey FOREIGN KEY (technician_id) REFERENCES technicians (id);
ALTER TABLE dispatch_requests ADD CONSTRAINT dispatch_requests_technician_id_fkey FOREIGN KEY (technician_id) REFERENCES technicians (id);
