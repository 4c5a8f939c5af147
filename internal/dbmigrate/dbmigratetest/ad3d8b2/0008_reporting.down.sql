DROP INDEX IF EXISTS donations_reporting_day_idx;
DROP INDEX IF EXISTS donations_reporting_fundraiser_day_idx;
DROP TABLE IF EXISTS fundraiser_daily_totals;
DROP TABLE IF EXISTS car_reports;
DROP TABLE IF EXISTS car_users;
DROP TABLE IF EXISTS cars;
