package framework

import "context"

// HTTPGet does a plain HTTP/1.0 GET of path at addr from inside the network namespace
// netnsName and returns the status code and body, such as a health check node port's
// answer seen from the external client.
func (c *Cluster) HTTPGet(ctx context.Context, netnsName, addr, path string) (int, string, error) {
	return c.httpGet(ctx, netnsName, addr, path)
}
