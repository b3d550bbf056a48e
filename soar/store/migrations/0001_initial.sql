-- soar schema, first version.
--
-- Times are timestamptz (UTC); the tracking core's integer microseconds convert exactly.
-- Raw input is not stored in the database: the ingest side archives it as compressed files,
-- one per protocol per day, so there is no raw_messages table.

CREATE TABLE aircraft (
    id                 bigint PRIMARY KEY,  -- soar.records.aircraft_id(address_type, address)
    address_type       text NOT NULL CHECK (address_type IN ('other', 'icao', 'flarm', 'ogn')),
    address            integer NOT NULL CHECK (address BETWEEN 0 AND 16777215),
    registration       text,
    competition_number text,
    model              text,
    aircraft_type      smallint CHECK (aircraft_type BETWEEN 0 AND 15),  -- OGN type code
    category           text,  -- ADS-B emitter category, when known
    device_type        text,  -- tracker device family (FLARM, OGN tracker, SafeSky, ...)
    tracked            boolean NOT NULL DEFAULT true,
    identified         boolean NOT NULL DEFAULT true,  -- false only when the DDB says so
    protocol           text CHECK (protocol IN ('ogn', 'beast', 'sbs')),
    first_seen_at      timestamptz NOT NULL DEFAULT now(),
    last_fix_at        timestamptz,
    lat                double precision CHECK (lat BETWEEN -90 AND 90),
    lon                double precision CHECK (lon BETWEEN -180 AND 180),
    altitude_ft        real,
    callsign           text,
    CONSTRAINT aircraft_id_matches_address CHECK (
        id = ((CASE address_type WHEN 'other' THEN 0 WHEN 'icao' THEN 1
                                 WHEN 'flarm' THEN 2 WHEN 'ogn' THEN 3 END)::bigint << 24)
             | address
    ),
    UNIQUE (address_type, address)
);
-- "aircraft in a bounding box, latest position": point(lon, lat) <@ box(...)
CREATE INDEX aircraft_last_position ON aircraft USING gist (point(lon, lat))
    WHERE lat IS NOT NULL AND lon IS NOT NULL;
CREATE INDEX aircraft_last_fix_at ON aircraft (last_fix_at);
CREATE INDEX aircraft_registration ON aircraft (registration) WHERE registration IS NOT NULL;

-- One row per position. Daily partitions are created ahead of time by
-- soar.store.partitions.ensure_partitions; the default partition catches anything else so
-- no fix is ever rejected for lacking one (ensure_partitions moves such rows out later).
CREATE TABLE fixes (
    received_at     timestamptz NOT NULL,
    aircraft_id     bigint NOT NULL,
    lat             double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon             double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    altitude_ft     real,
    agl_ft          real,
    ground_speed_kt real,
    track_deg       real,
    climb_fpm       real,
    turn_rate       real,
    callsign        text,
    squawk          text,
    flight_id       uuid,
    receiver        text,
    protocol        text NOT NULL CHECK (protocol IN ('ogn', 'beast', 'sbs')),
    is_active       boolean,
    on_ground       boolean,
    signal_db       real,
    bit_errors      smallint,
    freq_offset_khz real,
    packet_time     text,
    source          text NOT NULL DEFAULT '',
    -- The tracking core drops fixes < 1 s apart per aircraft, so (aircraft, time) is a natural
    -- key: a replayed batch (spool replay, retry after an ambiguous commit) inserts nothing twice.
    -- It is also the index for "an aircraft's fixes by time" and a flight's track
    -- (aircraft_id = flight.aircraft_id AND received_at BETWEEN first_fix_at AND last_fix_at).
    PRIMARY KEY (aircraft_id, received_at)
) PARTITION BY RANGE (received_at);
CREATE TABLE fixes_default PARTITION OF fixes DEFAULT;

CREATE TABLE flights (
    id                  uuid PRIMARY KEY,
    aircraft_id         bigint NOT NULL,
    protocol            text NOT NULL CHECK (protocol IN ('ogn', 'beast', 'sbs')),
    first_fix_at        timestamptz NOT NULL,
    last_fix_at         timestamptz NOT NULL,
    takeoff_at          timestamptz,  -- NULL: first seen airborne
    landing_at          timestamptz,
    timed_out_at        timestamptz,
    timeout_phase       text CHECK (timeout_phase IN ('climbing', 'cruising', 'descending', 'unknown')),
    callsign            text,
    departure_airport   text,
    arrival_airport     text,
    takeoff_runway      text,
    landing_runway      text,
    distance_m          double precision NOT NULL DEFAULT 0,
    min_lat             double precision,
    min_lon             double precision,
    max_lat             double precision,
    max_lon             double precision,
    min_altitude_ft     real,
    max_altitude_ft     real,
    max_agl_ft          real,
    fix_count           integer NOT NULL DEFAULT 0,
    spurious_reason     text,
    tow_aircraft_id     bigint,
    release_at          timestamptz,
    release_altitude_ft real,
    release_height_ft   real,
    end_reason          text,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- the day a flight belongs to: its takeoff, or when first seen airborne
    started_at          timestamptz GENERATED ALWAYS AS (coalesce(takeoff_at, first_fix_at)) STORED,
    CHECK (last_fix_at >= first_fix_at)
);
CREATE UNIQUE INDEX flights_one_open_per_aircraft ON flights (aircraft_id)
    WHERE landing_at IS NULL AND timed_out_at IS NULL AND end_reason IS NULL;
CREATE INDEX flights_by_aircraft ON flights (aircraft_id, started_at DESC);
CREATE INDEX flights_by_day ON flights (started_at);
CREATE INDEX flights_by_departure ON flights (departure_airport, started_at)
    WHERE departure_airport IS NOT NULL;
CREATE INDEX flights_by_arrival ON flights (arrival_airport, started_at)
    WHERE arrival_airport IS NOT NULL;

CREATE TABLE receivers (
    name             text PRIMARY KEY,
    lat              double precision CHECK (lat BETWEEN -90 AND 90),
    lon              double precision CHECK (lon BETWEEN -180 AND 180),
    altitude_ft      real,
    first_seen_at    timestamptz NOT NULL,
    latest_packet_at timestamptz NOT NULL
);

CREATE TABLE receiver_statuses (
    name              text NOT NULL,
    received_at       timestamptz NOT NULL,
    version           text,
    platform          text,
    cpu_load          real,
    ram_free_mb       real,
    ram_total_mb      real,
    ntp_offset_ms     real,
    ntp_ppm           real,
    temperature_c     real,
    rf_correction_ppm real,
    senders           integer,
    raw               text NOT NULL DEFAULT '',
    PRIMARY KEY (name, received_at)
);

CREATE TABLE server_messages (
    received_at timestamptz NOT NULL,
    source      text NOT NULL,
    text        text NOT NULL
);
CREATE UNIQUE INDEX server_messages_key ON server_messages (source, received_at, md5(text));
