package wxtoken_test

// Runs the Go client against a live wxtoken and WeChat simulator (the scenario in clients/README.md).
// Environment: WXTOKEN_URL (the test skips when it is unset), WXTOKEN_API_KEY (granted
// WXTOKEN_APPID only), WXTOKEN_APPID, WXTOKEN_FORBIDDEN_APPID, WXTOKEN_SIM_URL.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"wxtoken"
)

// countingTransport counts the HTTP requests that actually leave the client.
type countingTransport struct{ n atomic.Int64 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

func now() float64 { return float64(time.Now().UnixMilli()) / 1000 }

func sleepSeconds(s float64) {
	if s < 0 {
		s = 0
	}
	time.Sleep(time.Duration(s * float64(time.Second)))
}

func TestClient(t *testing.T) {
	base := os.Getenv("WXTOKEN_URL")
	if base == "" {
		t.Skip("WXTOKEN_URL is not set (the environment is described in clients/README.md)")
	}
	env := func(name string) string {
		v := os.Getenv(name)
		if v == "" {
			t.Fatalf("%s is not set (the environment is described in clients/README.md)", name)
		}
		return v
	}
	key, appid, forbiddenAppid := env("WXTOKEN_API_KEY"), env("WXTOKEN_APPID"), env("WXTOKEN_FORBIDDEN_APPID")
	wechat := strings.TrimRight(env("WXTOKEN_SIM_URL"), "/")
	ctx := context.Background()

	stepCache(t, ctx, base, key, appid)
	t.Log("1. Token() twice: same token, one request to wxtoken")

	// readme:begin
	wx := &wxtoken.Client{Base: base, APIKey: key} // wxtoken's internal URL and this service's API key
	getcallbackip := func(token string) (map[string]any, error) {
		resp, err := http.Get(wechat + "/cgi-bin/getcallbackip?access_token=" + url.QueryEscape(token))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var answer map[string]any
		return answer, json.NewDecoder(resp.Body).Decode(&answer)
	}
	answer, err := wx.WithToken(ctx, appid, getcallbackip) // on 40001/42001: reports the token, retries once

	watching, stopWatching := context.WithCancel(ctx)
	newTokens := make(chan wxtoken.Token, 16) // the current token at once (after 0), then each new one
	go wx.Watch(watching, appid, 0, func(t wxtoken.Token) { newTokens <- t }, nil)
	// readme:end
	defer stopWatching()
	if err != nil {
		t.Fatalf("WithToken: %v", err)
	}
	if _, ok := answer["ip_list"].([]any); !ok {
		t.Fatalf("WithToken answered %v", answer)
	}
	t.Logf("2. WithToken(getcallbackip): ip_list %v", answer["ip_list"])

	// The retired token must be the cached one: if the scheduled refresh is near, let it pass first.
	var info wxtoken.Token
	for attempt := 0; ; attempt++ {
		if attempt == 4 {
			t.Fatal("the token stayed due for refresh")
		}
		if info, err = wx.TokenInfo(ctx, appid); err != nil {
			t.Fatalf("TokenInfo: %v", err)
		}
		margin := float64(info.RefreshAt) - now()
		if margin >= 8 {
			break
		}
		t.Logf("  scheduled refresh in %.0f s; waiting for it first", margin)
		sleepSeconds(margin + 2)
	}
	before := info.Generation

	resp, err := http.Post(wechat+"/_sim/accounts/"+url.PathEscape(appid)+"/retire_tokens", "application/json", nil)
	if err != nil {
		t.Fatalf("retire_tokens: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("retire_tokens answered %d", resp.StatusCode)
	}
	var used []string
	retried, err := wx.WithToken(ctx, appid, func(token string) (map[string]any, error) {
		used = append(used, token)
		return getcallbackip(token)
	})
	if err != nil {
		t.Fatalf("WithToken after retire_tokens: %v", err)
	}
	if len(used) != 2 {
		t.Fatalf("the WeChat call ran %d times, expected 2 (40001, then the new token)", len(used))
	}
	if used[0] == used[1] {
		t.Fatal("Invalidate returned the refused token: this appid was force-refreshed less than " +
			"refresh.min_force_interval (30 s) ago (an earlier run?); wait or use another appid")
	}
	if used[0] != info.AccessToken {
		t.Fatal("the first call did not use the cached token")
	}
	if _, ok := retried["ip_list"].([]any); !ok {
		t.Fatalf("WithToken after retire_tokens answered %v", retried)
	}
	deadline := time.After(15 * time.Second)
	var seen wxtoken.Token
	for seen.Generation <= before {
		select {
		case seen = <-newTokens:
		case <-deadline:
			t.Fatalf("the watcher reported no generation above %d within 15 s", before)
		}
	}
	stopWatching()
	t.Logf("3. retire_tokens: 40001, Invalidate, retry with a new token; watcher saw generation %d > %d",
		seen.Generation, before)

	_, err = wx.Token(ctx, forbiddenAppid)
	var wxErr *wxtoken.Error
	if !errors.As(err, &wxErr) || wxErr.Status != 403 || wxErr.Code != "forbidden" {
		t.Fatalf("Token of an appid the key is not granted: expected 403 forbidden, got %v", err)
	}
	t.Logf("4. an appid not granted: %v", err)

	started := time.Now()
	unreachable := &wxtoken.Client{Base: "http://127.0.0.1:1", APIKey: key, Timeout: 5 * time.Second}
	if _, err = unreachable.Token(ctx, appid); err == nil {
		t.Fatal("Token from a wxtoken that is not listening succeeded")
	}
	if elapsed := time.Since(started); elapsed > 10*time.Second {
		t.Fatalf("the unreachable wxtoken took %v to fail", elapsed)
	}
	t.Logf("5. wxtoken not listening: %v after %v", err, time.Since(started).Round(time.Millisecond))
}

// stepCache checks that Token twice gives the same token with one request to wxtoken.
func stepCache(t *testing.T, ctx context.Context, base, key, appid string) {
	for attempt := 0; attempt < 3; attempt++ {
		counter := &countingTransport{}
		counted := &wxtoken.Client{Base: base, APIKey: key, HTTP: &http.Client{Transport: counter}}
		first, err := counted.TokenInfo(ctx, appid)
		if err != nil {
			t.Fatalf("TokenInfo: %v", err)
		}
		if float64(first.RefreshAt)-now() < 2 { // due for refresh: a second request would be right
			t.Log("  token due for refresh within 2 s; waiting for the next one")
			sleepSeconds(float64(first.RefreshAt) - now() + 1.5)
			continue
		}
		second, err := counted.Token(ctx, appid)
		if err != nil {
			t.Fatalf("Token: %v", err)
		}
		if second != first.AccessToken {
			t.Fatal("Token returned a different token from the cache")
		}
		if n := counter.n.Load(); n != 1 {
			t.Fatalf("two Token calls sent %d requests, expected 1", n)
		}
		return
	}
	t.Fatal("the token kept being due for refresh; cannot check the cache")
}
