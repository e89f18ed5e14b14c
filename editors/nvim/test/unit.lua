-- Unit checks that need no server: word/line splitting, the JSON shape of the settings, the server command,
-- the partial accept of the vim.lsp.inline_completion path (Neovim 0.12+), driven with an item shaped like
-- the ones that module passes to `on_accept`, and the timer of the cursor notification (cursor_notify_ms).
--
--   nvim --headless --clean -l editors/nvim/test/unit.lua
--
-- Prints one line per check; exits 1 when one fails.
local here = vim.fs.dirname(vim.fs.normalize(debug.getinfo(1, 'S').source:sub(2)))
vim.opt.runtimepath:prepend(vim.fs.dirname(here))

local intarsia = require('intarsia')
local ghost = require('intarsia.ghost')

local failed, total = 0, 0
local function eq(name, got, want)
  total = total + 1
  if vim.deep_equal(got, want) then
    print('ok - ' .. name)
  else
    failed = failed + 1
    print(('not ok - %s\n    got:  %s\n    want: %s'):format(name, vim.inspect(got), vim.inspect(want)))
  end
end

-- next_word / next_line
eq('a word', ghost.next_word('on_area(pts)'), 'on_area')
eq('one punctuation character', ghost.next_word('(pts)'), '(')
eq('leading blanks and line breaks go with the word', ghost.next_word('\n    return y'), '\n    return')
eq('multi-byte letters are word characters', ghost.next_word('größe = 1'), 'größe')
eq('white space only', ghost.next_word('  '), '  ')
eq('the rest of the line', ghost.next_line('y = x * 2\n    return y'), 'y = x * 2')
eq('a leading line break takes the next line', ghost.next_line('\n    return y\nz'), '\n    return y')
eq('CRLF: the break stays with the rest', ghost.next_line('a\r\nb'), 'a\r')
eq('a single line', ghost.next_line('compute()'), 'compute()')

-- settings as JSON: empty tables must be objects where the server expects objects
eq('empty settings are a JSON object', vim.json.encode(intarsia._server_settings({})), '{}')
eq('an empty test table is a JSON object',
  vim.json.decode(vim.json.encode(intarsia._server_settings({ test = { table = {} } }))).test,
  { table = vim.empty_dict() })
eq('an empty test table encodes as {}', vim.json.encode(intarsia._server_settings({ test = { table = {} } })),
  '{"test":{"table":{}}}')
eq('lists stay lists', vim.json.encode(intarsia._server_settings({ languages = {} })), '{"languages":[]}')

-- the server command gets --log-file; false keeps stderr
local tmp = vim.fn.tempname()
local cfg = vim.tbl_deep_extend('force', intarsia.defaults, { log_file = tmp .. '/logs/intarsia.log' })
eq('--log-file is added to the command', intarsia._lsp_config(cfg).cmd,
  { 'intarsia', 'serve', '--log-file', tmp .. '/logs/intarsia.log' })
eq('the log folder is created', vim.fn.isdirectory(tmp .. '/logs'), 1)
cfg.log_file = false
eq('log_file = false: the command as given', intarsia._lsp_config(cfg).cmd, { 'intarsia', 'serve' })
eq('settings go to init_options and the configuration section',
  intarsia._lsp_config(vim.tbl_extend('force', cfg, { settings = { maxTokens = 5 } })).init_options,
  { intarsia = { maxTokens = 5 } })

-- the server's settings come from setup() only: whatever else was merged into the client's config (a project's
-- settings file imported by another plugin, here remoteEndpoint and model) is replaced before initialize, and the
-- workspace/configuration answer is setup()'s section
local own = vim.tbl_extend('force', cfg, { settings = { maxTokens = 5, test = { table = {} } } })
local lc = intarsia._lsp_config(own)
local merged = { settings = { intarsia = { maxTokens = 5, remoteEndpoint = 'http://attacker.example', model = '/x' },
  other = { a = 1 } } }
local client_settings = merged.settings -- what Neovim keeps as client.settings
local params = { initializationOptions = { intarsia = { remoteEndpoint = 'http://attacker.example' } } }
lc.before_init(params, merged)
eq('initialize carries the setup() settings only', params.initializationOptions,
  { intarsia = { maxTokens = 5, test = { table = vim.empty_dict() } } })
eq('client.settings (sent after initialize) holds the setup() settings only', client_settings,
  { intarsia = { maxTokens = 5, test = { table = vim.empty_dict() } } })
local answer = lc.handlers['workspace/configuration'](nil, {
  items = { { section = 'intarsia' }, { section = 'other' }, {} },
}, { client_id = 1 })
eq('workspace/configuration answers the setup() section', answer[1], { maxTokens = 5, test = { table = vim.empty_dict() } })
eq('and nothing for other sections', answer[2], vim.NIL)
eq('the whole settings for an item without a section', answer[3].intarsia.maxTokens, 5)
own.settings = { maxTokens = 9 } -- update_settings() replaces config.settings
eq('later answers follow update_settings()', lc.handlers['workspace/configuration'](nil, {
  items = { { section = 'intarsia' } } })[1], { maxTokens = 9 })

-- partial accepts of the native path: the item starts where it was shown, before what was typed since
-- (Insert mode puts the cursor after the last character; in this script's normal mode, 'virtualedit' does.)
vim.o.virtualedit = 'onemore'
local executed = {}
local real_get_client = vim.lsp.get_client_by_id
vim.lsp.get_client_by_id = function(id)
  assert(id == 7, 'unexpected client id ' .. tostring(id))
  return {
    exec_cmd = function(_, command)
      executed[#executed + 1] = command
    end,
  }
end
vim.api.nvim_buf_set_lines(0, 0, -1, false, { 'y = polyg' })
vim.api.nvim_win_set_cursor(0, { 1, 9 })
local item = {
  client_id = 7,
  insert_text = 'gon_area(pts)',
  range = { start = { row = 0, col = 8 }, end_ = { row = 0, col = 8 } },
  command = { title = 'accepted', command = 'intarsia.accept', arguments = { { id = 'abc' } } },
}
intarsia._native_partial(item, 'word')
eq('the next word is inserted after what was typed', vim.api.nvim_buf_get_lines(0, 0, -1, false),
  { 'y = polygon_area' })
eq('the cursor follows', vim.api.nvim_win_get_cursor(0), { 1, 16 })
eq('acceptPartial counts the typed and the accepted characters', executed[1],
  { title = 'Intarsia: suggestion partly accepted', command = 'intarsia.acceptPartial',
    arguments = { { id = 'abc', acceptedLength = 8 } } })
item.insert_text = 'gon_area(pts)'
vim.api.nvim_buf_set_lines(0, 0, -1, false, { 'y = poly' })
vim.api.nvim_win_set_cursor(0, { 1, 8 })
intarsia._native_partial(item, 'line')
eq('a line that is all of the item is an accept', executed[2], item.command)
eq('the whole line is inserted', vim.api.nvim_buf_get_lines(0, 0, -1, false), { 'y = polygon_area(pts)' })
vim.api.nvim_buf_set_lines(0, 0, -1, false, { 'def f(x):', '    ' })
vim.api.nvim_win_set_cursor(0, { 2, 4 })
item.insert_text = 'y = x\n    return y'
item.range = { start = { row = 1, col = 4 }, end_ = { row = 1, col = 4 } }
intarsia._native_partial(item, 'line')
eq('the first line of a block', vim.api.nvim_buf_get_lines(0, 0, -1, false), { 'def f(x):', '    y = x' })
eq('acceptPartial with the line length', executed[3].arguments[1].acceptedLength, 5)
vim.api.nvim_buf_set_lines(0, 0, -1, false, { 'zzz' })
vim.api.nvim_win_set_cursor(0, { 1, 3 })
item.range = { start = { row = 0, col = 1 }, end_ = { row = 0, col = 1 } }
item.insert_text = 'abc'
intarsia._native_partial(item, 'word')
eq('an item that does not match what was typed is not inserted', vim.api.nvim_buf_get_lines(0, 0, -1, false),
  { 'zzz' })
eq('and not reported', #executed, 3)
vim.lsp.get_client_by_id = real_get_client

-- the cursor notification (intarsia/didMoveCursor): setup()'s cursor_notify_ms, and the one timer
local cursor = require('intarsia.cursor')
eq('the cursor notification waits 120 ms by default', intarsia.defaults.cursor_notify_ms, 120)
eq('cursor_notify_ms: whole ms, 0 or less is off, anything else the default',
  vim.tbl_map(intarsia._cursor_notify_ms, { 0, 250, 99.9, -5, '40', 'x', 0 / 0, math.huge, true }),
  { 0, 250, 99, 0, 40, 120, 120, 120, 120 })
eq('the method', cursor.METHOD, 'intarsia/didMoveCursor')
cursor.config.delay_ms = 50
cursor.schedule()
eq('a move starts the one timer', cursor.pending(), true)
cursor.schedule()
eq('another move restarts it', cursor.pending(), true)
cursor.config.delay_ms = 0
cursor.schedule()
eq('delay 0: the pending notification is dropped and nothing waits', cursor.pending(), false)
cursor.config.delay_ms = 50
cursor.schedule()
cursor.cancel()
eq('cancel() drops it', cursor.pending(), false)
local sent_before = cursor.stats.sent
cursor.schedule()
vim.wait(200, function()
  return not cursor.pending()
end, 10)
vim.wait(50)
eq('without an Intarsia client on the buffer nothing is sent when the pause ends',
  { cursor.pending(), cursor.stats.sent }, { false, sent_before })

print(('%d of %d checks passed'):format(total - failed, total))
os.exit(failed == 0 and 0 or 1)
