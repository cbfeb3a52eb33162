-- wxtoken schema 7 (PostgreSQL): JS-SDK tickets (jsapi, wx_card) are credentials like tokens, one
-- access_tokens row each (generation, sealed ticket, issued/expires/refresh times, source
-- 'getticket'), keyed by the appid of the account they belong to. The NOTIFY trigger carries their
-- changes to every replica like any other credential's.
ALTER TABLE access_tokens DROP CONSTRAINT access_tokens_kind_check;
ALTER TABLE access_tokens ADD CONSTRAINT access_tokens_kind_check
    CHECK (kind IN ('component', 'authorizer', 'direct', 'jsapi', 'wx_card'));
