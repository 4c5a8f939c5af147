package demo

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/reporting"
)

// expectations is what the scenario did, as the scenario itself counts it,
// to be compared with what the jobs left in the database.
type expectations struct {
	mu sync.Mutex

	userIDs       []int64 // the run's users, by seed order
	userEmails    []string
	fundraiserIDs []int64
	// emails[i] is the run's i-th email, sent in that order.
	emails []sentEmail
	// latestEmail[user index][fundraiser index] is the index in emails of
	// the user's most recent email of the fundraiser, or -1.
	latestEmail [][]int

	// flagged is the set of email IDs the donations must flag.
	flagged map[int64]bool
	// donors[user index] counts the user's succeeded donations, by the
	// run's users only (new donors are counted in newDonors).
	succeededByFundraiser map[int64]fundraiserTotal

	opens, clicks map[int64]int64

	initialStock, paid int
	sku                string

	cars       []int64
	carUsers   map[int64]int // the number of distinct users per car
	driverIDs  []int64
	bulkJobs   int
	imports    []string // the imports' IDs (their job batches')
	donationsN int
}

type sentEmail struct {
	id             int64
	user, campaign int // indexes in userIDs and fundraiserIDs
}

type fundraiserTotal struct {
	count int64
	cents int64
}

// seedDonations inserts the run's users, fundraisers and sent emails: the
// data an application already has when the scenario starts (there is no API
// to send emails: that is another system's job).
func (r *run) seedDonations(ctx context.Context) error {
	start := time.Now()
	s := r.sizes
	e := &r.expect
	var err error

	names := make([]string, s.users)
	addrs := make([]string, s.users)
	for i := range s.users {
		names[i] = fmt.Sprintf("Demo User %d", i)
		addrs[i] = fmt.Sprintf("user%05d.%s@demo.example", i, r.tag)
	}
	e.userIDs, err = r.queryInt64s(ctx, `
INSERT INTO users (name, email)
SELECT n, a FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u (n, a, o) ORDER BY o
RETURNING id`, names, addrs)
	if err != nil {
		return fmt.Errorf("inserting users: %w", err)
	}
	e.userEmails = addrs

	fnames := make([]string, s.fundraisers)
	for i := range fnames {
		fnames[i] = fmt.Sprintf("Demo %s fundraiser %d", r.tag, i)
	}
	if e.fundraiserIDs, err = r.queryInt64s(ctx, `
INSERT INTO fundraisers (name) SELECT n FROM unnest($1::text[]) WITH ORDINALITY AS f (n, o) ORDER BY o RETURNING id`, fnames); err != nil {
		return fmt.Errorf("inserting fundraisers: %w", err)
	}

	e.latestEmail = make([][]int, s.users)
	for u := range e.latestEmail {
		e.latestEmail[u] = make([]int, s.fundraisers)
		for f := range e.latestEmail[u] {
			e.latestEmail[u][f] = -1
		}
	}
	users := make([]int64, s.emails)
	camps := make([]int64, s.emails)
	sentAt := make([]time.Time, s.emails)
	e.emails = make([]sentEmail, s.emails)
	base := time.Now().Add(-24 * time.Hour).Truncate(time.Second)
	for i := range s.emails {
		u, f := r.intN(s.users), r.intN(s.fundraisers)
		e.emails[i] = sentEmail{user: u, campaign: f}
		users[i], camps[i] = e.userIDs[u], e.fundraiserIDs[f]
		sentAt[i] = base.Add(time.Duration(i) * time.Second) // later index, later email
		e.latestEmail[u][f] = i
	}
	ids, err := r.queryInt64s(ctx, `
INSERT INTO emails (user_id, fundraiser_id, sent_at)
SELECT u, f, t FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[]) WITH ORDINALITY AS e (u, f, t, o) ORDER BY o
RETURNING id`, users, camps, sentAt)
	if err != nil {
		return fmt.Errorf("inserting emails: %w", err)
	}
	if len(ids) != s.emails {
		return fmt.Errorf("inserted %d emails, want %d", len(ids), s.emails)
	}
	for i, id := range ids {
		e.emails[i].id = id
	}
	e.flagged = map[int64]bool{}
	e.succeededByFundraiser = map[int64]fundraiserTotal{}
	e.opens, e.clicks = map[int64]int64{}, map[int64]int64{}
	took := time.Since(start)
	r.summary.Phases = append(r.summary.Phases, Phase{Name: "seed users and emails", Ops: s.users + s.fundraisers + s.emails, Took: took})
	_, _ = fmt.Fprintf(r.cfg.Out, "%-28s %7d in %6.2fs\n", "seed users and emails", s.users+s.fundraisers+s.emails, took.Seconds())
	return nil
}

// playDonations makes the donations: 40 % name the email whose link led
// to them, 40 % come from a user's address only, 20 % from new donors; 10 %
// of the payments fail.
func (r *run) playDonations(ctx context.Context) error {
	e := &r.expect
	e.donationsN = r.sizes.donations
	return r.phase(ctx, "donations", r.sizes.donations, func(ctx context.Context, i int) error {
		in := donations.DonateInput{
			AmountCents: int64(100 + r.intN(100_000)),
			Currency:    "USD",
			Succeeded:   r.intN(10) != 0,
		}
		var expectFlag int64 // the email the donation must flag, 0 for none
		switch kind := r.intN(10); {
		case kind < 4: // by the email's link
			em := e.emails[r.intN(len(e.emails))]
			in.FundraiserID = e.fundraiserIDs[em.campaign]
			in.EmailID = em.id
			in.DonorEmail = e.userEmails[em.user]
			expectFlag = em.id
		case kind < 8: // by address: the user's latest email of the fundraiser, if any
			u, f := r.intN(len(e.userIDs)), r.intN(len(e.fundraiserIDs))
			in.FundraiserID = e.fundraiserIDs[f]
			in.DonorEmail = e.userEmails[u]
			if last := e.latestEmail[u][f]; last >= 0 {
				expectFlag = e.emails[last].id
			}
		default: // a new donor, who got no email
			in.FundraiserID = e.fundraiserIDs[r.intN(len(e.fundraiserIDs))]
			in.DonorEmail = fmt.Sprintf("new%06d.%s@demo.example", i, r.tag)
		}
		d, err := r.donations.Donate(ctx, in)
		if err != nil {
			return err
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if d.Status == donations.StatusSucceeded {
			if expectFlag != 0 {
				e.flagged[expectFlag] = true
			}
			t := e.succeededByFundraiser[d.FundraiserID]
			t.count++
			t.cents += d.AmountCents
			e.succeededByFundraiser[d.FundraiserID] = t
		}
		return nil
	})
}

// trackBatch is how many events one tracking call carries, as a tracking
// endpoint that buffers a few milliseconds of events would send them.
const trackBatch = 50

// playTracking records the opens and clicks of the run's emails: 70 %
// opens, 30 % clicks, in batches.
func (r *run) playTracking(ctx context.Context) error {
	e := &r.expect
	batches := (r.sizes.events + trackBatch - 1) / trackBatch
	return r.phase(ctx, "email opens and clicks", batches, func(ctx context.Context, b int) error {
		n := min(trackBatch, r.sizes.events-b*trackBatch)
		var opens, clicks []int64
		for range n {
			id := e.emails[r.intN(len(e.emails))].id
			if r.intN(10) < 7 {
				opens = append(opens, id)
			} else {
				clicks = append(clicks, id)
			}
		}
		if err := r.donations.TrackBatch(ctx, opens, clicks); err != nil {
			return err
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, id := range opens {
			e.opens[id]++
		}
		for _, id := range clicks {
			e.clicks[id]++
		}
		return nil
	})
}

// playFlashSale sells the stock of one product to more buyers than units:
// each buyer begins a checkout and then pays (60 %), has a card refused
// and pays (15 %), has a card refused and gives up (10 %), or gives up at
// once (15 %). A sold-out buyer tries again a few times.
func (r *run) playFlashSale(ctx context.Context) error {
	e := &r.expect
	e.sku = "DEMO-" + r.tag
	e.initialStock = r.sizes.stock
	if err := r.exec(ctx, `INSERT INTO products (sku, stock) VALUES ($1, $2)`, e.sku, e.initialStock); err != nil {
		return fmt.Errorf("inserting the product: %w", err)
	}
	if e.initialStock >= 16 {
		if err := r.inventory.SetStrategy(ctx, e.sku, inventory.StrategyBuckets, 8); err != nil {
			return err
		}
	}
	return r.phase(ctx, "flash sale", r.sizes.buyers, func(ctx context.Context, _ int) error {
		var c inventory.Checkout
		for try := 0; ; try++ {
			var err error
			c, err = r.inventory.BeginCheckout(ctx, e.sku, 1)
			if err == nil {
				break
			}
			if !errors.Is(err, inventory.ErrSoldOut) && !errors.Is(err, inventory.ErrBusy) {
				return err
			}
			if try == 3 {
				return nil // went home
			}
			time.Sleep(time.Duration(5+r.intN(20)) * time.Millisecond)
		}
		pay := func() error {
			_, err := r.inventory.PaymentAuthorized(ctx, c.ID)
			if err != nil {
				return err
			}
			e.mu.Lock()
			e.paid++
			e.mu.Unlock()
			return nil
		}
		switch k := r.intN(100); {
		case k < 60:
			return pay()
		case k < 75:
			if _, err := r.inventory.PaymentFailed(ctx, c.ID); err != nil {
				return err
			}
			return pay()
		case k < 85:
			if _, err := r.inventory.PaymentFailed(ctx, c.ID); err != nil {
				return err
			}
			_, err := r.inventory.Abandon(ctx, c.ID)
			return err
		default:
			_, err := r.inventory.Abandon(ctx, c.ID)
			return err
		}
	})
}

// carUsersPage is how many users one bulk job of the demo adds (Run): an
// import pages a car's roster, so each car has several jobs at full scale,
// which the bulk queue's fair share per car (reporting.BulkInFlightPerCar)
// holds back beyond its places.
const carUsersPage = 500

// playCarUsers imports the car users: the run's cars, each with the same
// drivers, one import per car (reporting.Service.ImportCarUsers: a job
// batch of CreateCarUsersInBulk jobs of carUsersPage users each,
// reporting.MaxBulkUserIDs in a soak's rounds).
func (r *run) playCarUsers(ctx context.Context) error {
	e := &r.expect
	s := r.sizes
	perCar := max(1, s.carUsers/s.cars)
	names := make([]string, perCar)
	addrs := make([]string, perCar)
	for i := range perCar {
		names[i] = fmt.Sprintf("Demo Driver %d", i)
		addrs[i] = fmt.Sprintf("driver%06d.%s@demo.example", i, r.tag)
	}
	var err error
	if e.driverIDs, err = r.queryInt64s(ctx, `
INSERT INTO users (name, email) SELECT n, a FROM unnest($1::text[], $2::text[]) AS u (n, a) RETURNING id`, names, addrs); err != nil {
		return fmt.Errorf("inserting drivers: %w", err)
	}
	e.cars = make([]int64, s.cars)
	for i := range e.cars {
		if e.cars[i], err = r.reporting.CreateCar(ctx, fmt.Sprintf("Demo %s car %d", r.tag, i)); err != nil {
			return err
		}
	}
	page := reporting.MaxBulkUserIDs
	if r.showShare {
		page = carUsersPage
	}
	e.bulkJobs = len(e.cars) * ((len(e.driverIDs) + page - 1) / page)
	e.carUsers = map[int64]int{}
	for _, car := range e.cars {
		e.carUsers[car] = len(e.driverIDs)
	}
	if r.showShare {
		r.share = startShareSampler(ctx, r, e.cars, e.bulkJobs)
	}
	// One import per car: its pages as one job batch, whose callback
	// reports on the car once and publishes import.finished.
	e.imports = make([]string, len(e.cars))
	return r.phase(ctx, "bulk import of car users", len(e.cars), func(ctx context.Context, i int) error {
		imp, err := r.reporting.ImportCarUsers(ctx, e.cars[i], e.driverIDs, page)
		e.imports[i] = imp.ID
		return err
	})
}
