package gateway_test

import (
	"testing"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/gateway/storetest"
)

var _ storetest.Store = (*gateway.MemoryStore)(nil)

func TestMemoryStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store { return gateway.NewMemoryStore() })
}
