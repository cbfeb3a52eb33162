// Package wxtoken is a client for wxtoken's token API (its internal listener), standard library only.
//
//	wx := &wxtoken.Client{Base: "http://wxtoken.internal:8081", APIKey: key}
//	answer, err := wx.WithToken(ctx, "wxAUTHORIZERAPPID", callWeChat) // callWeChat(token) -> WeChat's JSON
//	go wx.Watch(ctx, "wxAUTHORIZERAPPID", 0, onToken, nil)           // optional: new tokens at once
//
// Tokens are cached per appid until their refresh_at (never until expires_at: WeChat retires a
// replaced token long before that). A *Client is safe for concurrent use. Nothing here logs the
// API key or a token.
package wxtoken

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Token is wxtoken's token response. Times are Unix seconds; Generation grows with each new token.
type Token struct {
	AppID       string `json:"appid"`
	AccessToken string `json:"access_token"`
	ExpiresAt   int64  `json:"expires_at"`
	RefreshAt   int64  `json:"refresh_at"`
	Generation  int64  `json:"generation"`
	Source      string `json:"source"`
}

// String describes the token without showing it, so that printing a Token leaks nothing.
func (t Token) String() string {
	return fmt.Sprintf("Token{appid=%s generation=%d refresh_at=%d}", t.AppID, t.Generation, t.RefreshAt)
}

// Error is wxtoken answering with an error: the HTTP status, wxtoken's error code ("forbidden",
// "no_valid_token", …; empty when the answer was not wxtoken's JSON, e.g. a proxy's page), its
// message, and on 429 the seconds to wait (RetryAfter). Connection failures are net/http's errors.
type Error struct {
	Status     int
	Code       string
	Message    string
	RetryAfter int
}

func (e *Error) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("wxtoken %d: %s", e.Status, e.Message)
	}
	return fmt.Sprintf("wxtoken %d %s: %s", e.Status, e.Code, e.Message)
}

// Client talks to one wxtoken with one API key. Set Base and APIKey; the rest is optional.
type Client struct {
	Base   string       // wxtoken's internal URL, e.g. http://wxtoken.internal:8081
	APIKey string       // the client's key, wxt_…
	HTTP   *http.Client // nil: http.DefaultClient; leave its Timeout zero (Timeout below bounds each request)
	// Timeout bounds each request (0: 15 s); a long-poll gets its wait on top.
	Timeout time.Duration

	mu     sync.Mutex
	tokens map[string]Token // appid -> the last token response
}

// TokenInfo returns appid's token response, from the cache until its RefreshAt.
func (c *Client) TokenInfo(ctx context.Context, appid string) (Token, error) {
	c.mu.Lock()
	t, ok := c.tokens[appid]
	c.mu.Unlock()
	if ok && float64(time.Now().UnixMilli())/1000 < float64(t.RefreshAt) {
		return t, nil
	}
	return c.request(ctx, appid, "", nil, 0)
}

// Token returns the access_token to call WeChat with for appid (cached until refresh_at).
func (c *Client) Token(ctx context.Context, appid string) (string, error) {
	t, err := c.TokenInfo(ctx, appid)
	return t.AccessToken, err
}

// Invalidate reports a token WeChat refused (40001/42001) and returns the token to use now.
func (c *Client) Invalidate(ctx context.Context, appid, refused string) (string, error) {
	body, _ := json.Marshal(map[string]string{"access_token": refused})
	t, err := c.request(ctx, appid, "/invalidate", body, 0)
	return t.AccessToken, err
}

// WithToken runs call with appid's token; call returns WeChat's decoded JSON. If WeChat answered
// errcode 40001 or 42001, WithToken reports that token and runs call once more with the token
// returned. It returns the last answer.
func (c *Client) WithToken(ctx context.Context, appid string, call func(token string) (map[string]any, error)) (map[string]any, error) {
	used, err := c.Token(ctx, appid)
	if err != nil {
		return nil, err
	}
	answer, err := call(used)
	if err != nil || !refused(answer["errcode"]) {
		return answer, err
	}
	if used, err = c.Invalidate(ctx, appid, used); err != nil {
		return answer, err
	}
	return call(used)
}

// refused says whether a decoded errcode is WeChat's invalid (40001) or expired (42001) token.
func refused(errcode any) bool {
	switch n := errcode.(type) {
	case float64:
		return n == 40001 || n == 42001
	case json.Number:
		return n == "40001" || n == "42001"
	case int:
		return n == 40001 || n == 42001
	}
	return false
}

// WatchWait is how long each long-poll of Watch waits for a new token.
const WatchWait = 30 * time.Second

// Watch long-polls appid's token (GET ?after=GEN&wait=30) until ctx is done, updating the cache
// and calling onToken with each generation above after (0: the current token first). Errors go
// to onError (may be nil) and are retried after 1 s, doubling up to 30 s. It returns ctx.Err().
func (c *Client) Watch(ctx context.Context, appid string, after int64, onToken func(Token), onError func(error)) error {
	delay := time.Second
	for ctx.Err() == nil {
		suffix := fmt.Sprintf("?after=%d&wait=%d", after, int(WatchWait/time.Second))
		t, err := c.request(ctx, appid, suffix, nil, WatchWait)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if onError != nil {
				onError(err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(delay):
			}
			if delay *= 2; delay > 30*time.Second {
				delay = 30 * time.Second
			}
			continue
		}
		delay = time.Second
		if t.Generation > after && ctx.Err() == nil {
			after = t.Generation
			onToken(t)
		}
	}
	return ctx.Err()
}

func (c *Client) request(ctx context.Context, appid, suffix string, body []byte, wait time.Duration) (Token, error) {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 15 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+wait)
	defer cancel()
	method := http.MethodGet
	if body != nil {
		method = http.MethodPost
	}
	u := fmt.Sprintf("%s/v1/tokens/%s%s", strings.TrimRight(c.Base, "/"), url.PathEscape(appid), suffix)
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return Token{}, err
	}
	req.Header.Set("Authorization", "Bearer "+c.APIKey)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	httpClient := c.HTTP
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return Token{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return Token{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return Token{}, errorFrom(resp, raw)
	}
	var t Token
	if err := json.Unmarshal(raw, &t); err != nil {
		return Token{}, fmt.Errorf("wxtoken's answer: %w", err)
	}
	c.mu.Lock()
	if c.tokens == nil {
		c.tokens = make(map[string]Token)
	}
	c.tokens[appid] = t
	c.mu.Unlock()
	return t, nil
}

func errorFrom(resp *http.Response, raw []byte) *Error {
	e := &Error{Status: resp.StatusCode, Message: "HTTP " + resp.Status}
	var body struct {
		Error struct{ Code, Message string }
	}
	if json.Unmarshal(raw, &body) == nil && body.Error.Code != "" {
		e.Code, e.Message = body.Error.Code, body.Error.Message
	}
	e.RetryAfter, _ = strconv.Atoi(resp.Header.Get("Retry-After"))
	return e
}
