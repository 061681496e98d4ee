// Interop check: a grpc-go client, built from the repo's proto/ with
// protoc-gen-go and protoc-gen-go-grpc, against a running Switchboard
// ingestion node.
//
//	go run . [HOST:PORT]     # or SWITCHBOARD_ADDR; default 127.0.0.1:50051
//
// interop/go.sh generates gen/ first. Prints one line per check and a last
// line `N passed, M failed`; exits 1 on any failure.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	sb "switchboard.example/gen/switchboard/v1"
)

const rpcTimeout = 10 * time.Second

type checks struct{ passed, failed int }

func (c *checks) run(name string, check func() error) {
	if err := check(); err != nil {
		c.failed++
		fmt.Printf("FAIL %s: %v\n", name, err)
		return
	}
	c.passed++
	fmt.Printf("ok   %s\n", name)
}

func main() {
	addr := os.Getenv("SWITCHBOARD_ADDR")
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	if addr == "" {
		addr = "127.0.0.1:50051"
	}
	fmt.Printf("target %s\n", addr)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Printf("FAIL connect to %s: %v\n0 passed, 1 failed\n", addr, err)
		os.Exit(1)
	}
	defer conn.Close()
	client := sb.NewIngestClient(conn)
	runID := randomID()
	envelope := func(conversation, body string) *sb.Envelope {
		return &sb.Envelope{
			TenantId:       "interop-go",
			Channel:        sb.Channel_WEBCHAT,
			Direction:      sb.Direction_INBOUND,
			ConversationId: runID + "-" + conversation,
			Content:        &sb.Envelope_Text{Text: &sb.Text{Body: body}},
		}
	}

	var c checks
	c.run("Publish valid text envelope", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		r, err := client.Publish(ctx, &sb.PublishRequest{Envelope: envelope("unary", "hello from Go")})
		if err != nil {
			return err
		}
		if !isUUIDv7(r.GetMessageId()) {
			return fmt.Errorf("message_id %q is not a UUIDv7", r.GetMessageId())
		}
		if r.GetPartition() < 0 || r.GetOffset() < 0 || r.GetError() != nil {
			return fmt.Errorf("bad response %v", r)
		}
		return nil
	})

	c.run("Publish without tenant_id -> INVALID_ARGUMENT + BadRequest(envelope.tenant_id)", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		bad := envelope("unary", "no tenant")
		bad.TenantId = ""
		_, err := client.Publish(ctx, &sb.PublishRequest{Envelope: bad})
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument {
			return fmt.Errorf("code %v: %v", st.Code(), st.Message())
		}
		if fields := badRequestFields(st); !slices.Contains(fields, "envelope.tenant_id") {
			return fmt.Errorf("BadRequest fields %v", fields)
		}
		return nil
	})

	c.run("PublishStream 10 good + 1 invalid, all sequences answered, per-conversation order", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		stream, err := client.PublishStream(ctx)
		if err != nil {
			return err
		}
		conversationOf := map[uint64]string{}
		for n := range 10 {
			conversation := fmt.Sprintf("stream-%d", n%2)
			seq := uint64(n + 1)
			conversationOf[seq] = conversation
			if err := stream.Send(&sb.PublishRequest{Envelope: envelope(conversation, fmt.Sprintf("msg %d", n)), Sequence: seq}); err != nil {
				return err
			}
			if n == 4 {
				bad := envelope("stream-x", "no tenant")
				bad.TenantId = ""
				if err := stream.Send(&sb.PublishRequest{Envelope: bad, Sequence: 1000}); err != nil {
					return err
				}
			}
		}
		if err := stream.CloseSend(); err != nil {
			return err
		}
		bySeq := map[uint64]*sb.PublishResponse{}
		for {
			r, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			if _, twice := bySeq[r.GetSequence()]; twice {
				return fmt.Errorf("sequence %d answered twice", r.GetSequence())
			}
			bySeq[r.GetSequence()] = r
		}
		if len(bySeq) != 11 {
			return fmt.Errorf("%d answers for 11 requests", len(bySeq))
		}
		bad := bySeq[1000]
		if bad == nil || bad.GetError().GetCode() != int32(codes.InvalidArgument) ||
			!slices.Contains(bad.GetError().GetFields(), "envelope.tenant_id") {
			return fmt.Errorf("invalid request answered %v", bad)
		}
		for _, conversation := range []string{"stream-0", "stream-1"} {
			var mine []*sb.PublishResponse
			for seq := uint64(1); seq <= 10; seq++ {
				if conversationOf[seq] == conversation {
					mine = append(mine, bySeq[seq])
				}
			}
			if err := inOrder(mine); err != nil {
				return fmt.Errorf("%s: %v", conversation, err)
			}
		}
		return nil
	})

	c.run("PublishBatch: results in order, a bad envelope fails alone, its conversation's later ones are ABORTED", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		bad := envelope("batch-a", "a1: no content")
		bad.Content = nil
		r, err := client.PublishBatch(ctx, &sb.PublishBatchRequest{Envelopes: []*sb.Envelope{
			envelope("batch-a", "a0"),
			envelope("batch-b", "b0"),
			bad,
			envelope("batch-b", "b1"),
			envelope("batch-a", "a2"),
			envelope("batch-b", "b2"),
		}})
		if err != nil {
			return err
		}
		want := []codes.Code{codes.OK, codes.OK, codes.InvalidArgument, codes.OK, codes.Aborted, codes.OK}
		if len(r.GetResults()) != len(want) {
			return fmt.Errorf("%d results for %d envelopes", len(r.GetResults()), len(want))
		}
		for i, result := range r.GetResults() {
			got := codes.OK
			if result.GetError() != nil {
				got = codes.Code(result.GetError().GetCode())
			}
			if got != want[i] || result.GetSequence() != uint64(i) {
				return fmt.Errorf("result %d: %v, want %v", i, result, want[i])
			}
		}
		if r.GetFailedCount() != 2 {
			return fmt.Errorf("failed_count %d", r.GetFailedCount())
		}
		if f := r.GetResults()[2].GetError().GetFields(); !slices.Equal(f, []string{"envelopes[2].content"}) {
			return fmt.Errorf("bad envelope's fields %v", f)
		}
		if f := r.GetResults()[4].GetError().GetFields(); !slices.Equal(f, []string{"envelopes[2]"}) {
			return fmt.Errorf("aborted envelope's fields %v", f)
		}
		results := r.GetResults()
		return inOrder([]*sb.PublishResponse{results[1], results[3], results[5]})
	})

	c.run("PublishBatch: a copy of a channel message is a duplicate with the first one's id", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		first := envelope("batch-dup", "once")
		first.ChannelMessageId = runID + "-cmid"
		again := envelope("batch-dup", "once")
		again.ChannelMessageId = first.ChannelMessageId
		r, err := client.PublishBatch(ctx, &sb.PublishBatchRequest{Envelopes: []*sb.Envelope{first, again}})
		if err != nil {
			return err
		}
		results := r.GetResults()
		if len(results) != 2 || r.GetFailedCount() != 0 {
			return fmt.Errorf("results %v", results)
		}
		if results[0].GetDuplicate() || !results[1].GetDuplicate() ||
			results[0].GetMessageId() != results[1].GetMessageId() ||
			results[0].GetOffset() != results[1].GetOffset() {
			return fmt.Errorf("not deduplicated: %v", results)
		}
		return nil
	})

	c.run("PublishBatch over max_batch_messages -> INVALID_ARGUMENT naming the limit", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		envelopes := make([]*sb.Envelope, 501)
		for i := range envelopes {
			envelopes[i] = envelope("batch-big", "x")
		}
		_, err := client.PublishBatch(ctx, &sb.PublishBatchRequest{Envelopes: envelopes})
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument || !slices.Contains(badRequestFields(st), "envelopes") {
			return fmt.Errorf("code %v: %v", st.Code(), st.Message())
		}
		return nil
	})

	fmt.Printf("%d passed, %d failed\n", c.passed, c.failed)
	if c.failed > 0 {
		os.Exit(1)
	}
}

// inOrder checks that one conversation's answers are in one partition at
// rising offsets.
func inOrder(answers []*sb.PublishResponse) error {
	for i, r := range answers {
		if r == nil || r.GetError() != nil || r.GetMessageId() == "" {
			return fmt.Errorf("answer %d: %v", i, r)
		}
		if i > 0 {
			prev := answers[i-1]
			if r.GetPartition() != prev.GetPartition() || r.GetOffset() <= prev.GetOffset() {
				return fmt.Errorf("out of order: %v after %v", r, prev)
			}
		}
	}
	return nil
}

// badRequestFields are the field paths of the google.rpc.BadRequest details.
func badRequestFields(st *status.Status) []string {
	var fields []string
	for _, detail := range st.Details() {
		if br, ok := detail.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

func isUUIDv7(id string) bool {
	return len(id) == 36 && id[8] == '-' && id[13] == '-' && id[14] == '7' && id[18] == '-' && id[23] == '-'
}

func randomID() string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
